"""A sweep file (YAML) -> a validated SweepSpec. Every problem is a one-line SpecError naming the key and the fix.

The schema is the pydantic dataclasses below, one per section: each value's type and range is declared once, in
its field. Nothing here starts Ray or touches the results folder: a spec is checked whole before anything runs.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (AfterValidator, BeforeValidator, ConfigDict, Field, PlainValidator, StrictBool, StrictInt,
                      TypeAdapter, ValidationError, field_validator)
from pydantic.dataclasses import dataclass as pydantic_dataclass
from typing_extensions import TypedDict

from aemodels import ConfigError, TrainConfig
from aemodels.registry import VARIANTS, knob_user, knobs, shown, unknown_name

# Every variant has these; each knob of the registry belongs to one variant and is searched for it only.
COMMON = ("variant", "latent_dim", "lr")
SEARCHED = COMMON + tuple(k.name for k in knobs())
DISTRIBUTIONS = ("choice", "int", "logint", "uniform", "loguniform")
EXECUTIONS = ("auto", "trial", "packed")
REPORTS = ("rungs", "epoch")
WANDB_MODES = ("online", "offline")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# An image has 784 pixels: a code wider than that compresses nothing, and 10^9 would fail only in the trial.
MAX_LATENT_DIM = 4096
MAX_NAME_CHARS = 100  # a sweep's name is a folder name, and file systems allow 255 bytes
# Which variant uses a conditional hyperparameter (a knob): it is sampled only for trials of that variant.
CONDITIONAL = {k.name: knob_user(k.name) for k in knobs()}


class SpecError(ValueError):
    """A sweep file that cannot run; the message is one line: where, what, and what to do."""


# ---- the value types the sections share -----------------------------------------------------------

def _number(value) -> float:
    # PyYAML reads 1e-4 (no dot) as a string: accept any string that is plainly a number.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"must be a number, got {shown(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, got {shown(value)}")
    if not math.isfinite(value):
        raise ValueError(f"must be finite, got {shown(value)}")
    return float(value)


def _text(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, got {shown(value)}")
    return value


Number = Annotated[float, PlainValidator(_number)]  # finite; YAML's `yes` and `.inf` are refused
Text = Annotated[str, PlainValidator(_text)]  # non-empty
Count = Annotated[StrictInt, Field(ge=1)]  # StrictInt: YAML's `yes`, 3.0 and "3" are refused
NonNegative = Annotated[StrictInt, Field(ge=0)]
# An unknown key is refused with the closest known one (extra="forbid"); a section's value is frozen once made.
_schema = partial(pydantic_dataclass, frozen=True, config=ConfigDict(extra="forbid"))


def _gpu_fraction(value):
    if value == "auto":
        return value
    value = _number(value)
    if value != 0 and not 0 < value <= 1:
        raise ValueError(f"={value} is outside (0, 1]; give a fraction of one GPU per trial, 'auto', or 0 for CPU only")
    return value


def _positive_seconds(value: float) -> float:
    if not value > 0:
        raise ValueError(f"must be a positive number of seconds, got {value}")
    return value


def _max_t(epochs):
    """A sweep trains at least one epoch (ASHA's max_t), where a model may have none; whether `epochs` is an
    integer at all is TrainConfig's to judge, with the rest of `train:`."""
    if isinstance(epochs, int) and not isinstance(epochs, bool) and epochs < 1:
        raise ValueError(f"must be >= 1, got {epochs}")
    return epochs


def _latent_dim(value: int) -> int:
    if not 1 <= value <= MAX_LATENT_DIM:
        raise ValueError(f"must be between 1 and {MAX_LATENT_DIM}, got {shown(value)}")
    return value


# ---- the schema ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    """One searched (or fixed) hyperparameter: `kind` is 'fixed' or one of DISTRIBUTIONS."""

    name: str
    kind: str
    values: tuple = ()  # fixed: (value,); choice: the options
    low: Optional[float] = None
    high: Optional[float] = None
    step: Optional[float] = None

    @property
    def log(self) -> bool:
        return self.kind in ("logint", "loguniform")

    def options(self) -> tuple:
        """The values a discrete parameter can take (fixed and choice only)."""
        return self.values

    def to_yaml(self):
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "choice":
            return {"choice": list(self.values)}
        out = {self.kind: [self.low, self.high]}
        if self.step is not None:
            out["step"] = self.step
        return out


@_schema
class SearcherSpec:
    seed: NonNegative = 0
    n_startup_trials: NonNegative = 10
    multivariate: StrictBool = True
    constant_liar: StrictBool = True


@_schema
class SchedulerSpec:
    grace_period: Count = 1
    reduction_factor: Annotated[Number, Field(gt=1)] = 3.0
    brackets: Count = 1
    # rungs: report to Tune where ASHA decides, carrying the epochs between; epoch: every epoch
    report: Literal[REPORTS] = "rungs"
    # between reports, a checkpoint (with a report) at most this often
    checkpoint_every_s: Annotated[Number, AfterValidator(_positive_seconds)] = 60.0


def rung_epochs(grace_period: int, reduction_factor: float, max_t: int, brackets: int = 1) -> tuple[int, ...]:
    """The epochs at which ASHA decides (its rungs in every bracket, and max_t), ascending.

    Mirrors ray.tune.schedulers.AsyncHyperBandScheduler: bracket s has rungs grace * rf**(k + s) for
    k < log(max_t / grace) / log(rf) - s + 1, and a trial is judged at a rung by its first result at or
    past it, so a fractional rung is decided at the next whole epoch.
    """
    epochs = {max_t}
    for s in range(brackets):
        count = int(math.log(max_t / grace_period) / math.log(reduction_factor) - s + 1)
        epochs.update(math.ceil(grace_period * reduction_factor ** (k + s)) for k in range(count))
    return tuple(sorted(e for e in epochs if 1 <= e <= max_t))


@_schema
class ResourceSpec:
    # trial: one Ray actor per trial; packed: trials sharing a device train as one model
    execution: Literal[EXECUTIONS] = "auto"
    cpu: Annotated[Number, Field(gt=0)] = 1.0  # CPUs per trial (trial execution)
    # GPU fraction per trial (trial execution): "auto" packs several trials per GPU, 0 = CPU only
    gpu: Annotated[Union[Literal["auto"], float], PlainValidator(_gpu_fraction)] = "auto"
    pack_size: Optional[Count] = None  # members per packed trainer; None = 256 per GPU, 2 per CPU core

    @property
    def threads_per_trial(self) -> int:
        """Torch threads of a trial in trial execution: its whole CPUs, at least one."""
        return max(1, int(self.cpu))


@_schema
class SimulateSpec:
    """Simulated training (sweep/simulate.py): recorded learning curves replayed instead of training."""

    # simulated time per member-epoch (a packed round takes this per member)
    seconds_per_epoch: Annotated[Number, Field(ge=0)] = 0.0


@_schema
class MlflowSpec:
    """An MLflow tracking server (or store) that gets one run per trial (sweep/tracking.py)."""

    uri: Text  # http(s)://host:port of `mlflow server`, or a local store: a folder, sqlite:///file.db
    experiment: Optional[Text] = None  # None: the sweep's name


@_schema
class WandbSpec:
    """A Weights & Biases project that gets one run per trial (sweep/tracking.py)."""

    project: Optional[Text] = None  # None: the sweep's name
    mode: Literal[WANDB_MODES] = "online"  # online: to the W&B server; offline: run files only, for `wandb sync` later
    entity: Optional[Text] = None  # the W&B user or team; None: the API key's default
    dir: Optional[Text] = None  # where wandb/ with the run files goes; None: the sweep's folder


@_schema
class TrackingSpec:
    """Where else every trial is logged (parameters, per-epoch metrics, final status): none by default."""

    mlflow: Optional[MlflowSpec] = None
    wandb: Optional[WandbSpec] = None

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(value) for name, value in (("mlflow", self.mlflow), ("wandb", self.wandb))
                if value is not None}


@_schema
class ConfirmSpec:
    """`confirm:` runs `sweep confirm` as the last step of `sweep run`: the top `top` configurations, `seeds`
    seeds each, for `epochs` epochs (None: the sweep's)."""

    top: Optional[Count] = None  # None: 5, or every completed trial if fewer
    seeds: Count = 5
    epochs: Optional[Count] = None


class TrainSection(TypedDict, total=False):
    """`train:`, the TrainConfig fields every trial shares. TrainConfig judges their values (aemodels owns those
    rules, and a checkpoint's config is judged by them without a sweep file); the sweep adds one rule of its own."""

    __pydantic_config__ = ConfigDict(extra="forbid")
    epochs: Annotated[Any, AfterValidator(_max_t)]
    batch_size: Any
    train_subset: Any
    seed: Any
    device: Any
    cuda_graphs: Any
    matmul_precision: Any


FIXED_TRAIN_KEYS = tuple(TrainSection.__annotations__)
TRAIN_DEFAULTS = {"epochs": 10, "batch_size": 128, "train_subset": None, "seed": 0, "device": "auto"}


@_schema
class SweepSpec:
    name: Text
    space: Annotated[dict[str, Param], PlainValidator(lambda raw: _parse_space(raw))]
    dataset: Any = "mnist"  # judged by TrainConfig, with train
    data_dir: Optional[Text] = None
    train: TrainSection = Field(default_factory=dict, validate_default=True)  # fixed TrainConfig fields
    num_samples: Count = 12
    searcher: SearcherSpec = SearcherSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    resources: ResourceSpec = ResourceSpec()
    max_concurrent_trials: Optional[Count] = None
    max_failures: NonNegative = 3
    drivers: Count = 1  # Tune drivers sharing the sweep's study, each with its share of the trials (sweep.drivers)
    storage_path: Text = "results"
    address: Optional[Text] = None
    dashboard: StrictBool = False
    description: Annotated[str, BeforeValidator(str)] = ""
    # configurations to evaluate first, as {name: value} mappings (Optuna enqueue_trial)
    points: Annotated[tuple, PlainValidator(lambda raw, info: _parse_points(raw, info.data.get("space")))] = ()
    simulate: Optional[SimulateSpec] = None  # None: real training
    # Trials added by each `sweep extend`, in order: extension i is driver `drivers + i` of the sweep, with its
    # own Tune experiment; num_samples counts them (it is the whole sweep's budget), the first drivers share
    # what is left (`base_samples`).
    extensions: tuple[Count, ...] = ()
    warm_start: Optional[Text] = None  # a finished sweep (name or folder) whose fitting trials seed this study
    tracking: TrackingSpec = TrackingSpec()  # tracking servers that log every trial besides the tables
    confirm: Optional[ConfirmSpec] = None  # `sweep confirm` after the sweep; None: not run

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        if not NAME_PATTERN.match(name):
            raise ValueError(f"{shown(name)} must be letters, digits, '.', '_' or '-' (it names a folder)")
        if len(name) > MAX_NAME_CHARS:
            raise ValueError(f"{shown(name)} is {len(name)} characters; it names a folder, so keep it to "
                             f"{MAX_NAME_CHARS} or fewer")
        return name

    @field_validator("train")
    @classmethod
    def _train_config(cls, train: dict, info) -> dict:
        train = {**TRAIN_DEFAULTS, **train}
        if {"dataset", "data_dir"} <= info.data.keys():  # else their own error is the one reported
            try:
                TrainConfig(**train, dataset=info.data["dataset"], data_dir=info.data["data_dir"])
            except ConfigError as exc:
                raise SpecError(f"train: {exc}") from None
        return train

    @property
    def base_samples(self) -> int:
        """The trials of the sweep's first `drivers`, before any `sweep extend`."""
        return self.num_samples - sum(self.extensions)

    @property
    def all_drivers(self) -> int:
        """Every driver number the sweep has used: its `drivers`, then one per extension."""
        return self.drivers + len(self.extensions)

    @property
    def epochs(self) -> int:
        """Epochs of a trial that ASHA never stops: ASHA's max_t."""
        return self.train["epochs"]

    @property
    def report_epochs(self) -> Optional[tuple[int, ...]]:
        """The epochs a trial reports to Tune at (besides checkpoints and its end); None: every epoch."""
        sched = self.scheduler
        if sched.report == "epoch":
            return None
        return rung_epochs(sched.grace_period, sched.reduction_factor, self.epochs, sched.brackets)

    def train_config(self, params: dict) -> TrainConfig:
        """The complete TrainConfig of a trial with the given searched values."""
        values = {**self.train, "dataset": self.dataset, "data_dir": self.data_dir}
        values.update({k: v for k, v in params.items() if v is not None})
        return TrainConfig.from_dict(values)

    def trial_params(self, config: dict) -> dict:
        """A trial's value of every searched name: sampled, else fixed, else None where its variant has no use."""
        variant = config.get("variant", self.space["variant"].values[0])
        params = {}
        for name in SEARCHED:
            value = config.get(name)
            param = self.space.get(name)
            if value is None and param is not None and param.kind == "fixed":
                value = param.values[0]
            if name in CONDITIONAL and CONDITIONAL[name] != variant:
                value = None
            params[name] = value
        return params

    def variants(self) -> tuple[str, ...]:
        return self.space["variant"].options()

    def to_dict(self) -> dict:
        """The resolved sweep file: every default filled in, loadable again with `parse`."""
        return {
            "name": self.name, "description": self.description, "dataset": self.dataset, "data_dir": self.data_dir,
            "train": dict(self.train), "space": {n: p.to_yaml() for n, p in self.space.items()},
            "searcher": dataclasses.asdict(self.searcher), "scheduler": dataclasses.asdict(self.scheduler),
            "num_samples": self.num_samples, "resources": dataclasses.asdict(self.resources),
            "max_concurrent_trials": self.max_concurrent_trials, "max_failures": self.max_failures,
            "drivers": self.drivers, "storage_path": self.storage_path, "address": self.address,
            "dashboard": self.dashboard,
            "points": [dict(p) for p in self.points],
            "simulate": None if self.simulate is None else dataclasses.asdict(self.simulate),
            "extensions": list(self.extensions), "warm_start": self.warm_start,
            "tracking": self.tracking.to_dict(),
            "confirm": None if self.confirm is None else dataclasses.asdict(self.confirm),
        }



# ---- reading ------------------------------------------------------------------------------------

def load(path, overrides: tuple[str, ...] = ()) -> SweepSpec:
    """Read, override (`key.sub=value`) and validate a sweep file."""
    raw = read_yaml(path)
    for item in overrides:
        apply_override(raw, item)
    return parse(raw, source=str(path))


MAX_FILE_BYTES = 1 << 20  # a sweep file, sweep.yaml or best_config.yaml is a few KB
MAX_YAML_VALUES = 10_000  # values after aliases are expanded; a sweep file has about a hundred


class FileProblem(ValueError):
    """Why a file cannot be read, in a few words (`is a folder`); the caller adds the path and the fix."""


def read_text(path, limit: int = MAX_FILE_BYTES) -> str:
    """The text of a small regular file.

    The file is opened without blocking and checked on the open descriptor before anything is read:
    a FIFO would block the open forever, and /dev/zero never ends.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise FileProblem("no such file") from None
    except OSError as exc:
        raise FileProblem(f"cannot read it ({exc.strerror or exc}); check its permissions") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise FileProblem("is a folder")
        if not stat.S_ISREG(info.st_mode):
            raise FileProblem("is not a regular file (a device, pipe or socket)")
        if info.st_size > limit:
            raise FileProblem(f"is {info.st_size:,} bytes, more than the {limit:,} such a file can be")
        data = os.read(fd, limit + 1)
    except OSError as exc:
        raise FileProblem(f"cannot read it ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FileProblem("is not a text file") from None


class YamlRefused(yaml.YAMLError):
    """Well-formed YAML that is still refused (a key given twice, aliases that expand too far)."""


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one
    silently) and aliases that expand past MAX_YAML_VALUES values: a "billion laughs" file is a few
    lines whose aliases expand to 10^9 values, which anything that walks it (a repr) never finishes."""

    # YAML 1.2's booleans, true and false only: YAML 1.1's yes/no/on/off would make `--set name=no` a sweep
    # named False and a categorical choice [on, off] two booleans. A scalar that spells them is a string.
    yaml_implicit_resolvers = {first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
                               for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def compose_document(self):
        node = super().compose_document()
        _check_expansion(node)
        return node

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then overriding keys is no duplicate
                continue
            key = self.construct_object(key_node)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base constructor says so with its position
                break
            if first is not None:
                raise YamlRefused(f"line {key_node.start_mark.line + 1}: key {shown(key)} is given twice (first at "
                                  f"line {first + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


StrictLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))


def _check_expansion(root) -> None:
    """Count the values of the document with every alias expanded, without expanding it."""
    sizes: dict[int, Optional[int]] = {}

    def size(node) -> int:
        if id(node) in sizes:
            if sizes[id(node)] is None:
                raise YamlRefused(f"line {node.start_mark.line + 1}: an alias refers to the value that holds it; "
                                  "write the value out")
            return sizes[id(node)]
        sizes[id(node)] = None
        children = node.value if isinstance(node, yaml.SequenceNode) else \
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_YAML_VALUES:
                raise YamlRefused(f"line {node.start_mark.line + 1}: its aliases (*name) expand to more than "
                                  f"{MAX_YAML_VALUES:,} values; write the values out instead of aliasing them")
        sizes[id(node)] = total
        return total

    if root is not None:
        size(root)


def load_yaml(text: str):
    """YAML text -> Python values, with StrictLoader; raises yaml.YAMLError (YamlRefused among them)."""
    try:
        return yaml.load(text, Loader=StrictLoader)
    except RecursionError:  # PyYAML composes nested values recursively
        raise YamlRefused("values nested too deeply; flatten them") from None
    except ValueError as exc:  # a constructor's own: a 5,000-digit integer, a date like 2024-13-45
        raise YamlRefused(f"a value cannot be read ({shown(str(exc))}); fix it") from None


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error as one line: where and what."""
    if isinstance(exc, YamlRefused):
        return str(exc)
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"malformed YAML{where}: {problem}"


def read_yaml(path) -> dict:
    path = Path(path)
    try:
        text = read_text(path)
    except FileProblem as exc:
        fix = "pass the path of a sweep YAML file inside it" if str(exc) == "is a folder" else \
            "pass the path of a sweep YAML (see configs/)"
        raise SpecError(f"{path}: {exc}; {fix}") from None
    try:
        raw = load_yaml(text)
    except YamlRefused as exc:
        raise SpecError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: {yaml_problem(exc)}; fix the syntax there") from None
    if raw is None:
        raise SpecError(f"{path}: the file is empty; a sweep needs at least `name` and `space` (see configs/quick.yaml)")
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a sweep file must be a mapping of keys (name, space, ...), "
                        f"not a {_yaml_type(raw)}; see configs/quick.yaml")
    return raw


def apply_override(raw: dict, item: str) -> None:
    """`train.epochs=2`: the value is read as YAML, so numbers, lists and mappings work; `key=null` removes key."""
    if "=" not in item:
        raise SpecError(f"--set {shown(item)}: expected key=value, e.g. --set train.epochs=2")
    key, text = item.split("=", 1)
    try:
        value = load_yaml(text)
    except yaml.YAMLError:
        raise SpecError(f"--set {shown(item)}: the value is not valid YAML; quote it or fix it") from None
    parts = key.strip().split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise SpecError(f"--set {shown(item)}: {'.'.join(parts[:depth + 1])} is a value, not a section")
        node = child
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


# ---- validation ---------------------------------------------------------------------------------

_SWEEP = TypeAdapter(SweepSpec)
TOP_KEYS = tuple(f.name for f in dataclasses.fields(SweepSpec))
# The sections an unknown key is looked for in, to say `train.lr` belongs in `space.lr`. confirm's keys repeat
# train's (epochs, seeds), so pointing there from a misplaced `epochs` would mislead.
_HINTED = {"": TOP_KEYS, "train.": FIXED_TRAIN_KEYS, "space.": SEARCHED,
           **{f"{name}.": tuple(f.name for f in dataclasses.fields(cls))
              for name, cls in (("searcher", SearcherSpec), ("scheduler", SchedulerSpec), ("resources", ResourceSpec),
                                ("simulate", SimulateSpec), ("tracking", TrackingSpec),
                                ("tracking.mlflow", MlflowSpec), ("tracking.wandb", WandbSpec))}}
_SECTIONS = {**_HINTED, "confirm.": tuple(f.name for f in dataclasses.fields(ConfirmSpec))}
_UNKNOWN_KEY = ("unexpected_keyword_argument", "extra_forbidden", "invalid_key")  # pydantic's, for a key not a field
_EXAMPLES = {"tracking.mlflow.uri": "{uri: http://127.0.0.1:5000} (the address of `mlflow server`)"}


def parse(raw: dict, source: str = "sweep") -> SweepSpec:
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a sweep must be a mapping, not a {_yaml_type(raw)}")
    try:  # a key set to null means its default, as `--set key=null` removes it
        spec = _SWEEP.validate_python({k: v for k, v in raw.items() if v is not None})
    except ValidationError as exc:
        # An unknown key first: a misspelt key's value is often what the other errors are about.
        error = min(exc.errors(), key=lambda e: e["type"] not in _UNKNOWN_KEY)
        raise SpecError(f"{source}: {_message(error)}") from None
    problem = _between_sections(spec)
    if problem:
        raise SpecError(f"{source}: {problem}")
    return spec


def _between_sections(spec: SweepSpec) -> Optional[str]:
    """The rules that tie sections together. They hold for a sweep file, not for a spec derived from one in code
    (`sweep confirm` runs fewer trials than the extensions count), so they are checked here and not in the schema."""
    if spec.scheduler.grace_period > spec.epochs:
        return (f"scheduler.grace_period={spec.scheduler.grace_period} exceeds train.epochs={spec.epochs}; "
                "ASHA needs grace_period <= epochs")
    extended = sum(spec.extensions)
    if extended >= spec.num_samples:
        return (f"extensions add {extended} trials but num_samples={spec.num_samples} counts them all; raise "
                "num_samples or remove extensions")
    if spec.drivers > spec.num_samples - extended:
        return (f"drivers={spec.drivers} but num_samples={spec.num_samples}: a driver would have no trial; lower "
                "drivers or raise num_samples")
    if spec.confirm is not None and spec.confirm.top is not None and spec.confirm.top > spec.num_samples:
        return (f"confirm.top={spec.confirm.top} exceeds num_samples={spec.num_samples}; confirm at most as many "
                "configurations as the sweep tries")
    return None


def _where(loc) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _message(error: dict, where: Optional[str] = None) -> str:
    """One of pydantic's errors as the one line a user reads: the key, what is wrong, what would do."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error["input"]
    where = _where(error["loc"]) if where is None else where
    if kind in _UNKNOWN_KEY:
        section = _where(error["loc"][:-1])
        return _unknown_key(section + "." if section else "", error["loc"][-1])
    if kind == "missing":
        section, _, key = where.rpartition(".")
        if not section:
            return f"missing `{key}`; add it (see configs/quick.yaml)"
        return f"{section} needs a {key}" + (f", e.g. {_EXAMPLES[where]}" if where in _EXAMPLES else "; add it")
    if kind == "literal_error":
        return unknown_name(where, value, re.findall(r"'([^']*)'", ctx["expected"]))
    if kind == "value_error":
        problem = str(ctx["error"])
        if isinstance(ctx["error"], SpecError):  # it names its own place
            return problem
        return where + ("" if problem.startswith("=") else " ") + problem
    shape = {"dataclass_type": "a mapping of keys", "dict_type": "a mapping of keys", "tuple_type": "a list"}.get(kind)
    if shape:
        return f"{where} must be {shape}, not a {_yaml_type(value)}"
    bounds = [f"{op} {ctx[key]:g}" for key, op in (("gt", ">"), ("ge", ">="), ("le", "<=")) if key in ctx]
    wanted = {"int_type": "an integer", "bool_type": "true or false", "string_type": "a string"}.get(kind)
    if wanted or bounds:
        return f"{where} must be {wanted or bounds[0]}, got {shown(value)}"
    return f"{where}: {error['msg']}, got {shown(value)}"  # a rule of pydantic's the schema has no words for


def _unknown_key(prefix: str, key, known=None) -> str:
    known = _SECTIONS.get(prefix, ()) if known is None else known
    # `train.lr` for `space.lr`: the key exists, in another section, and that is the hint to give.
    elsewhere = [where + key for where, keys in _HINTED.items() if prefix in _HINTED and where != prefix
                 and key in keys]
    if elsewhere:
        return (f"unknown key {shown(f'{prefix}{key}')} (did you mean {' or '.join(map(repr, elsewhere))}?; {key} "
                "is a key of another section)")
    return unknown_name("key", f"{prefix}{key}", [prefix + k for k in known])


def _mapping(value, where) -> dict:
    if not isinstance(value, dict):
        raise SpecError(f"{where} must be a mapping of keys, not a {_yaml_type(value)}")
    return value


def _check_keys(mapping: dict, prefix: str, known) -> None:
    for key in mapping:
        if key not in known:
            raise SpecError(_unknown_key(prefix, key, known))


def _checked(rule: TypeAdapter, value, where: str):
    try:
        return rule.validate_python(value)
    except ValidationError as exc:
        raise SpecError(_message(exc.errors()[0], where)) from None


_INTEGER, _NUMBER = TypeAdapter(StrictInt), TypeAdapter(Number)
_VALUE = {"latent_dim": TypeAdapter(Annotated[StrictInt, AfterValidator(_latent_dim)]),
          "lr": TypeAdapter(Annotated[Number, Field(gt=0)])}


def _check_value(name, value, where):
    """A single value of a searched hyperparameter, as TrainConfig would accept it."""
    if name == "variant":  # the registry, read when checked: a variant registered after import counts
        if value not in VARIANTS:
            raise SpecError(f"{where}: {unknown_name('variant', value, VARIANTS)}")
        return value
    if name not in _VALUE:  # a knob's rule is made when first needed, so a variant registered later has one
        minimum = next(k.minimum for k in knobs() if k.name == name)
        _VALUE[name] = TypeAdapter(Annotated[Number, Field(ge=minimum)])
    return _checked(_VALUE[name], value, where if where.endswith(name) else f"{where}: {name}")


def _parse_space(raw) -> dict[str, Param]:
    _mapping(raw, "space")
    if raw and all(isinstance(p, Param) for p in raw.values()):  # a spec's own, as `dataclasses.replace` passes it
        return raw
    _check_keys(raw, "space.", SEARCHED)
    if not raw:
        raise SpecError("space is empty; give at least lr or latent_dim a range")
    raw = {"variant": "vanilla", **raw}
    space = {name: _parse_param(name, value) for name, value in raw.items()}
    variants = space["variant"].options()
    for name, variant in CONDITIONAL.items():
        if name in space and variant not in variants:
            raise SpecError(f"space.{name} is only used by the {variant} variant, which the space never samples "
                            f"(variant: {', '.join(variants)}); remove it or add {variant}")
    return space


def _parse_points(raw, space: Optional[dict[str, Param]]) -> tuple:
    """Explicit configurations to try first: each must set every searched parameter the space would sample."""
    if not isinstance(raw, (list, tuple)):
        raise SpecError("points must be a list of mappings, e.g. [{variant: vanilla, lr: 0.001}]")
    if space is None:  # the space's own error is the one reported
        return tuple(raw)
    points = []
    for i, point in enumerate(raw):
        where = f"points[{i}]"
        _check_keys(_mapping(point, where), where + ".", SEARCHED)
        point = {name: _check_value(name, value, f"{where}.{name}") for name, value in point.items()}
        variant = point.get("variant", space["variant"].values[0] if space["variant"].kind == "fixed" else None)
        for name, param in space.items():
            if param.kind == "fixed":
                if name in point and point[name] != param.values[0]:
                    raise SpecError(f"{where}.{name}={shown(point[name])} but the space fixes {name} to "
                                    f"{shown(param.values[0])}")
            elif name not in CONDITIONAL or CONDITIONAL[name] == variant:
                if name not in point:
                    raise SpecError(f"{where} does not set {name}; give every searched parameter a value")
                inside = point[name] in param.values if param.kind == "choice" else \
                    param.low <= point[name] <= param.high
                if not inside:
                    raise SpecError(f"{where}.{name}={shown(point[name])} is outside space.{name}; widen the space")
        points.append({k: v for k, v in point.items() if k in space and space[k].kind != "fixed"})
    return tuple(points)


def _parse_param(name: str, value) -> Param:
    where = f"space.{name}"
    if isinstance(value, dict):
        kinds = [k for k in value if k in DISTRIBUTIONS]
        _check_keys(value, where + ".", DISTRIBUTIONS + ("step",))
        if len(kinds) != 1:
            raise SpecError(f"{where} needs exactly one of {', '.join(DISTRIBUTIONS)}, "
                            "e.g. {loguniform: [1.0e-4, 1.0e-2]}")
        kind = kinds[0]
        if kind == "choice":
            options = value["choice"]
            if not isinstance(options, list) or not options:
                raise SpecError(f"{where}.choice must be a non-empty list of values")
            if "step" in value:
                raise SpecError(f"{where}: step applies to ranges, not to choice")
            options = tuple(_check_value(name, v, f"{where}.choice") for v in options)
            if len(set(options)) != len(options):
                raise SpecError(f"{where}.choice lists a value twice; list each once")
            return Param(name, "choice", options)
        return _parse_range(name, kind, value, where)
    if isinstance(value, list):
        raise SpecError(f"{where} is a bare list; write {{choice: {shown(value)}}} to search over it")
    return Param(name, "fixed", (_check_value(name, value, where),))


def _parse_range(name, kind, value, where) -> Param:
    bounds = value[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise SpecError(f"{where}.{kind} must be [low, high], got {shown(bounds)}")
    if name == "variant":
        raise SpecError(f"{where} is a name; search it with {{choice: [...]}}")
    integer = kind in ("int", "logint")
    if name == "latent_dim" and not integer:
        raise SpecError(f"{where}: latent_dim is an integer; use int or logint instead of {kind}")
    if name != "latent_dim" and integer:
        raise SpecError(f"{where}: {name} is a real number; use uniform or loguniform instead of {kind}")
    low, high = (_checked(_INTEGER if integer else _NUMBER, b, f"{where}.{kind}") for b in bounds)
    if low > high:
        raise SpecError(f"{where}: the range [{low}, {high}] is inverted; write [{high}, {low}]")
    if low == high:
        raise SpecError(f"{where}: the range [{low}, {high}] is empty; widen it or give the value alone")
    if kind.startswith("log") and low <= 0:
        raise SpecError(f"{where}: a log range must be above 0, got low={low}; use a positive low "
                        f"(e.g. {1 if integer else 1e-6}) or {'int' if integer else 'uniform'}")
    for bound in (low, high):
        _check_value(name, bound, f"{where}.{kind}")
    step = value.get("step")
    if step is not None:
        step = _checked(_INTEGER if integer else _NUMBER, step, f"{where}.step")
        if step <= 0 or kind.startswith("log"):
            raise SpecError(f"{where}.step must be > 0 and is not allowed on log ranges")
    return Param(name, kind, (), low, high, step)


def _yaml_type(value) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value),
                                                                                          type(value).__name__)
