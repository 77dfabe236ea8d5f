"""The variant registry: one entry per variant, naming its module, pack family, knobs, loss term and colour.

Whatever depends on which variants or knobs exist reads it: TrainConfig's checks, the pack, the sweep's
space and tables, the report. The seed's four are registered at the end of this file, by where their
classes are (aemodels.models); a new variant is its module class plus one `register_variant(...)` call.
Nothing here imports torch: a class given by name is imported when a model is first built.
"""
from __future__ import annotations

import difflib
import importlib
import os
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional, Union

SHOWN_CHARS = 60  # a value quoted in an error message, so that the message stays one short line
# Modules that register variants of their own, comma-separated. Every process that imports aemodels
# imports them, a sweep's Ray workers included (they inherit the driver's environment), so a variant
# defined outside aemodels trains and sweeps like the seed's.
MODULES_ENV = "AEMODELS_VARIANT_MODULES"


@dataclass(frozen=True)
class Knob:
    """A hyperparameter only one variant uses: a TrainConfig field, a sweep-file key and a table column.

    `low`..`high` (log-scaled when `log`) is the range a sweep of the variant usually searches; a value
    below `minimum` is refused.
    """

    name: str
    default: float
    low: float
    high: float
    log: bool = False
    minimum: float = 0.0


@dataclass(frozen=True)
class Variant:
    """One registered variant.

    `module` is built as `module(latent_dim, **{knob: value})`. Variants of one `family` have the same
    parameters and, in eval mode, the same forward, and train together in one pack. The training
    objective is the reconstruction MSE of the clean image plus the variant's loss term: `noise` names the
    knob scaling the Gaussian noise added to the training input (clamped to [0, 1], as
    `DenoisingAE.add_noise` does), `penalty` the knob the module's own `penalty(z)` method weights (as
    `SparseAE.penalty`); training adds that method's value. `color` is the matplotlib colour the report
    draws the variant in.
    """

    name: str
    source: Union[type, str]  # the module class, or where it is ("package.module:Class"), imported when first built
    family: str
    color: str
    knobs: tuple[Knob, ...] = ()
    noise: Optional[str] = None
    penalty: Optional[str] = None

    @property
    def module(self) -> type:
        """The module class (importing its module, and torch, on first use)."""
        if not isinstance(self.source, str):
            return self.source
        where, _, name = self.source.partition(":")
        module = getattr(importlib.import_module(where), name)
        _check_penalty(self.name, module, self.penalty)
        return module

    def knob(self, name: str) -> Optional[Knob]:
        return next((k for k in self.knobs if k.name == name), None)


class _Modules(Mapping):
    """name -> module class, in registration order; a class is imported only when it is looked up."""

    def __getitem__(self, name: str) -> type:
        return REGISTRY[name].module

    def __iter__(self):
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)


REGISTRY: dict[str, Variant] = {}
VARIANTS: Mapping[str, type] = _Modules()
FAMILY: dict[str, str] = {}  # name -> pack family


def register_variant(name: str, module: Union[type, str], family: str, color: str, knobs=(), noise: Optional[str] = None,
                     penalty: Optional[str] = None) -> Variant:
    """Add a variant. `module` is its class, or "package.module:Class" to import it only when it is built.
    Its knobs must be fields of TrainConfig, and no other variant may use them."""
    knobs = tuple(knobs)
    names = [k.name for k in knobs]
    if name in REGISTRY:
        raise ValueError(f"variant {name!r} is already registered; pick another name")
    for role, knob in (("noise", noise), ("penalty", penalty)):
        if knob is not None and knob not in names:
            raise ValueError(f"variant {name!r}: {role}={knob!r} is not one of its knobs ({', '.join(names) or 'none'})")
    if not isinstance(module, str):  # a class named by a string is checked when it is imported
        _check_penalty(name, module, penalty)
    for knob in knobs:
        owner = knob_user(knob.name)
        if owner is not None:
            raise ValueError(f"variant {name!r}: knob {knob.name!r} is already used by {owner!r}; give it its own name")
    entry = Variant(name, module, family, color, knobs, noise, penalty)
    REGISTRY[name] = entry
    FAMILY[name] = family
    return entry


def _check_penalty(name: str, module: type, penalty: Optional[str]) -> None:
    if penalty is not None and not callable(getattr(module, "penalty", None)):
        raise ValueError(f"variant {name!r}: penalty={penalty!r} needs a penalty(z) method on "
                         f"{module.__name__}; add one")


def import_variant_modules() -> None:
    """Import the modules MODULES_ENV names (once each: Python caches imports)."""
    for name in filter(None, (n.strip() for n in os.environ.get(MODULES_ENV, "").split(","))):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(f"{MODULES_ENV} names {name!r}, which cannot be imported ({exc}); fix the name or "
                              "put its folder on PYTHONPATH") from None


def unregister_variant(name: str) -> None:
    """Remove a variant (for tests that register a toy one)."""
    REGISTRY.pop(name, None)
    FAMILY.pop(name, None)


def get_variant(name) -> Variant:
    if name not in REGISTRY:
        raise ValueError(unknown_name("variant", name, REGISTRY))
    return REGISTRY[name]


def knobs() -> tuple[Knob, ...]:
    """Every variant's knobs, in registration order."""
    return tuple(k for v in REGISTRY.values() for k in v.knobs)


def knob_user(name: str) -> Optional[str]:
    """The variant that uses knob `name`, or None when no variant has it."""
    return next((v.name for v in REGISTRY.values() if v.knob(name) is not None), None)


def shown(value) -> str:
    """A value's repr for an error message, cut to SHOWN_CHARS; reprlib never walks all of a large value."""
    text = _SHORT.repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = SHOWN_CHARS
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict = 3, 6, 4


def unknown_name(kind: str, name: object, known) -> str:
    """`unknown variant 'vanila' (did you mean 'vanilla'?; known: conv, denoising, ...)`."""
    known = sorted(known)
    short = isinstance(name, str) and len(name) <= SHOWN_CHARS
    close = difflib.get_close_matches(name, known, n=1) if short else []
    hint = f"did you mean {close[0]!r}?; " if close else ""
    return f"unknown {kind} {shown(name)} ({hint}known: {', '.join(known)})"


# The seed article's four (aemodels.models), by name: what the sweep file, the tables and the report read
# of them needs no torch. Then the variants of the modules MODULES_ENV names, which see these registered.
NOISE_DEFAULT = 0.3  # the seed article's Part 3 noise level
SPARSITY_DEFAULT = 1e-3  # the seed article's lambda
register_variant("vanilla", "aemodels.models:VanillaAE", family="mlp", color="tab:blue")
register_variant("denoising", "aemodels.models:DenoisingAE", family="mlp", color="tab:orange",
                 knobs=[Knob("noise_factor", NOISE_DEFAULT, 0.1, 0.7)], noise="noise_factor")
register_variant("sparse", "aemodels.models:SparseAE", family="mlp", color="tab:green",
                 knobs=[Knob("sparsity_weight", SPARSITY_DEFAULT, 1e-5, 1e-2, log=True)], penalty="sparsity_weight")
register_variant("conv", "aemodels.models:ConvAE", family="conv", color="tab:red")
import_variant_modules()
