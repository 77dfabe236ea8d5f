"""TrainConfig: every knob of one training run, in one frozen dataclass validated where it is made.

A bad value raises ConfigError with one line naming the field, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

from .registry import REGISTRY, VARIANTS, knob_user, knobs, shown, unknown_name

DATASETS = ("mnist", "fashion_mnist")
DEVICES = ("auto", "cpu", "cuda")
MATMUL_PRECISIONS = ("highest", "high")
TRAIN_IMAGES = 60_000


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message is one line and says what would work."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Units are in the names: lr per step, epochs over the (sub)set, batch_size in images."""

    variant: str = "vanilla"
    latent_dim: int = 32
    lr: float = 1e-3
    # Knobs (aemodels.models registers which variant uses each, its default and its range).
    noise_factor: Optional[float] = None  # denoising only; None means 0.3
    sparsity_weight: Optional[float] = None  # sparse only; None means 1e-3
    batch_size: int = 128
    epochs: int = 10
    seed: int = 0
    train_subset: Optional[int] = None  # None: all 60,000 training images; else a seeded random subset
    dataset: str = "mnist"
    data_dir: Optional[str] = None  # None: $AEMODELS_DATA_DIR, else ~/.cache/aemodels
    device: str = "auto"  # auto picks cuda when present
    cuda_graphs: bool = True  # capture the training step as a CUDA graph on CUDA (ignored on CPU)
    matmul_precision: str = "highest"  # "high" lets CUDA use TF32 matmuls (faster, ~1e-3 relative error)

    def __post_init__(self):
        check = _Checker(self)
        if self.variant not in VARIANTS:
            raise ConfigError(unknown_name("variant", self.variant, VARIANTS))
        check.integer("latent_dim", low=1)
        check.number("lr", low=0.0, low_open=True)
        check.integer("batch_size", low=1)
        check.integer("epochs", low=0)
        check.integer("seed", low=0)
        if self.train_subset is not None:
            check.integer("train_subset", low=1, high=TRAIN_IMAGES)
            if self.train_subset < self.batch_size:
                raise ConfigError(f"train_subset={self.train_subset} is smaller than batch_size={self.batch_size}; "
                                  "use a subset of at least one batch")
        check.choice("dataset", DATASETS)
        check.choice("device", DEVICES)
        check.choice("matmul_precision", MATMUL_PRECISIONS)
        if not isinstance(self.cuda_graphs, bool):
            raise ConfigError(f"cuda_graphs must be true or false, got {shown(self.cuda_graphs)}")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise ConfigError(f"data_dir must be a path string, got {shown(self.data_dir)}")
        for knob in knobs():
            self._variant_knob(knob, check)

    def _variant_knob(self, knob, check):
        value, variant = getattr(self, knob.name), knob_user(knob.name)
        if self.variant != variant:
            if value is not None:
                raise ConfigError(f"{knob.name} is only used by the {variant} variant, not {self.variant!r}; "
                                  f"remove {knob.name} or set variant={variant!r}")
            return
        if value is None:
            object.__setattr__(self, knob.name, knob.default)
        else:
            check.number(knob.name, low=knob.minimum)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, suitable for YAML, JSON and checkpoints."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a mapping, refusing unknown keys with the closest known one."""
        if not isinstance(values, dict):
            raise ConfigError(f"a TrainConfig needs a mapping of field: value, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(unknown_name("TrainConfig field", key, known))
        return cls(**values)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @property
    def uses(self) -> tuple[str, ...]:
        """The hyperparameters this run actually uses (the others are None)."""
        return ("latent_dim", "lr") + tuple(k.name for k in REGISTRY[self.variant].knobs)


class _Checker:
    """Type and range checks that produce one-line ConfigErrors."""

    def __init__(self, config):
        self.config = config

    def integer(self, name, low=None, high=None):
        value = getattr(self.config, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {shown(value)}")
        self._range(name, value, low, high, low_open=False)

    def number(self, name, low=None, high=None, low_open=False):
        value = getattr(self.config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {shown(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be finite, got {shown(value)}")
        object.__setattr__(self.config, name, float(value))
        self._range(name, value, low, high, low_open)

    def choice(self, name, options):
        value = getattr(self.config, name)
        if value not in options:
            raise ConfigError(unknown_name(name.replace("_", " "), value, options))

    @staticmethod
    def _range(name, value, low, high, low_open):
        if low is not None and (value <= low if low_open else value < low):
            bound = f"> {low}" if low_open else f">= {low}"
            raise ConfigError(f"{name} must be {bound}, got {shown(value)}")
        if high is not None and value > high:
            raise ConfigError(f"{name} must be <= {high}, got {shown(value)}")

