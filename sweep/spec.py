"""A sweep file (YAML) -> a validated SweepSpec. Every problem is a one-line SpecError naming the key and the fix.

Nothing here starts Ray or touches the results folder: a spec is checked whole before anything runs.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from aemodels import ConfigError, TrainConfig
from aemodels.models import VARIANTS, shown, unknown_name
from aemodels.registry import knob_user, knobs

# Every variant has these; each knob of the registry belongs to one variant and is searched for it only.
COMMON = ("variant", "latent_dim", "lr")
SEARCHED = COMMON + tuple(k.name for k in knobs())
DISTRIBUTIONS = ("choice", "int", "logint", "uniform", "loguniform")
EXECUTIONS = ("auto", "trial", "packed")
FIXED_TRAIN_KEYS = ("epochs", "batch_size", "train_subset", "seed", "device", "cuda_graphs", "matmul_precision")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# An image has 784 pixels: a code wider than that compresses nothing, and 10^9 would fail only in the trial.
MAX_LATENT_DIM = 4096
MAX_NAME_CHARS = 100  # a sweep's name is a folder name, and file systems allow 255 bytes
# Which variant uses a conditional hyperparameter (a knob): it is sampled only for trials of that variant.
CONDITIONAL = {k.name: knob_user(k.name) for k in knobs()}


class SpecError(ValueError):
    """A sweep file that cannot run; the message is one line: where, what, and what to do."""


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


@dataclass(frozen=True)
class SearcherSpec:
    seed: int = 0
    n_startup_trials: int = 10
    multivariate: bool = True
    constant_liar: bool = True


@dataclass(frozen=True)
class SchedulerSpec:
    grace_period: int = 1
    reduction_factor: float = 3
    brackets: int = 1
    report: str = "rungs"  # rungs: report to Tune where ASHA decides, carrying the epochs between; epoch: every epoch
    checkpoint_every_s: float = 60.0  # between reports, a checkpoint (with a report) at most this often


REPORTS = ("rungs", "epoch")


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


@dataclass(frozen=True)
class ResourceSpec:
    execution: str = "auto"  # trial: one Ray actor per trial; packed: trials sharing a device train as one model
    cpu: float = 1.0  # CPUs per trial (trial execution)
    gpu: Any = "auto"  # GPU fraction per trial (trial execution): "auto" packs several trials per GPU, 0 = CPU only
    pack_size: Optional[int] = None  # members per packed trainer; None = 256 per GPU, 2 per CPU core

    @property
    def threads_per_trial(self) -> int:
        """Torch threads of a trial in trial execution: its whole CPUs, at least one."""
        return max(1, int(self.cpu))


@dataclass(frozen=True)
class SimulateSpec:
    """Simulated training (sweep/simulate.py): recorded learning curves replayed instead of training."""

    seconds_per_epoch: float = 0.0  # simulated time per member-epoch (a packed round takes this per member)


@dataclass(frozen=True)
class MlflowSpec:
    """An MLflow tracking server (or store) that gets one run per trial (sweep/tracking.py)."""

    uri: str = ""  # http(s)://host:port of `mlflow server`, or a local store: a folder, sqlite:///file.db
    experiment: Optional[str] = None  # None: the sweep's name


@dataclass(frozen=True)
class WandbSpec:
    """A Weights & Biases project that gets one run per trial (sweep/tracking.py)."""

    project: Optional[str] = None  # None: the sweep's name
    mode: str = "online"  # online: to the W&B server; offline: run files only, for `wandb sync` later
    entity: Optional[str] = None  # the W&B user or team; None: the API key's default
    dir: Optional[str] = None  # where wandb/ with the run files goes; None: the sweep's folder


WANDB_MODES = ("online", "offline")


@dataclass(frozen=True)
class TrackingSpec:
    """Where else every trial is logged (parameters, per-epoch metrics, final status): none by default."""

    mlflow: Optional[MlflowSpec] = None
    wandb: Optional[WandbSpec] = None

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(value) for name, value in (("mlflow", self.mlflow), ("wandb", self.wandb))
                if value is not None}


@dataclass(frozen=True)
class ConfirmSpec:
    """`confirm:` runs `sweep confirm` as the last step of `sweep run`: the top `top` configurations, `seeds`
    seeds each, for `epochs` epochs (None: the sweep's)."""

    top: Optional[int] = None  # None: 5, or every completed trial if fewer
    seeds: int = 5
    epochs: Optional[int] = None


@dataclass(frozen=True)
class SweepSpec:
    name: str
    space: dict[str, Param]
    train: dict[str, Any] = field(default_factory=dict)  # fixed TrainConfig fields
    dataset: str = "mnist"
    data_dir: Optional[str] = None
    num_samples: int = 12
    searcher: SearcherSpec = SearcherSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    resources: ResourceSpec = ResourceSpec()
    max_concurrent_trials: Optional[int] = None
    max_failures: int = 3
    drivers: int = 1  # Tune drivers sharing the sweep's study, each with its share of the trials (sweep.drivers)
    storage_path: str = "results"
    address: Optional[str] = None
    dashboard: bool = False
    description: str = ""
    points: tuple = ()  # configurations to evaluate first, as {name: value} mappings (Optuna enqueue_trial)
    simulate: Optional[SimulateSpec] = None  # None: real training
    # Trials added by each `sweep extend`, in order: extension i is driver `drivers + i` of the sweep, with its
    # own Tune experiment; num_samples counts them (it is the whole sweep's budget), the first drivers share
    # what is left (`base_samples`).
    extensions: tuple[int, ...] = ()
    warm_start: Optional[str] = None  # a finished sweep (name or folder) whose fitting trials seed this study
    tracking: TrackingSpec = TrackingSpec()  # tracking servers that log every trial besides the tables
    confirm: Optional[ConfirmSpec] = None  # `sweep confirm` after the sweep; None: not run

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

TOP_KEYS = ("name", "description", "dataset", "data_dir", "train", "space", "searcher", "scheduler", "num_samples",
            "resources", "max_concurrent_trials", "max_failures", "drivers", "storage_path", "address", "dashboard",
            "points", "simulate", "extensions", "warm_start", "tracking", "confirm")


def parse(raw: dict, source: str = "sweep") -> SweepSpec:
    check = _Check(source)
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a sweep must be a mapping, not a {_yaml_type(raw)}")
    check.keys(raw, TOP_KEYS, "")
    for required in ("name", "space"):
        if required not in raw:
            raise SpecError(f"{source}: missing `{required}`; add it (see configs/quick.yaml)")
    name = check.string(raw["name"], "name")
    if not NAME_PATTERN.match(name):
        raise SpecError(f"{source}: name {shown(name)} must be letters, digits, '.', '_' or '-' (it names a folder)")
    if len(name) > MAX_NAME_CHARS:
        raise SpecError(f"{source}: name {shown(name)} is {len(name)} characters; it names a folder, so keep it to "
                        f"{MAX_NAME_CHARS} or fewer")

    train = check.mapping(raw.get("train", {}), "train")
    check.keys(train, FIXED_TRAIN_KEYS, "train.")
    train = {"epochs": 10, "batch_size": 128, "train_subset": None, "seed": 0, "device": "auto", **train}
    # TrainConfig allows 0 epochs (an untrained model); a sweep needs ASHA's max_t >= 1, so that rule speaks first.
    check.integer(train["epochs"], "train.epochs", low=1)
    dataset = raw.get("dataset", "mnist")
    data_dir = raw.get("data_dir")
    if data_dir is not None:
        data_dir = check.string(data_dir, "data_dir")
    try:  # the fixed training settings are TrainConfig's own fields: let it judge them
        TrainConfig(**train, dataset=dataset, data_dir=data_dir)
    except ConfigError as exc:
        raise SpecError(f"{source}: train: {exc}") from None
    except TypeError as exc:
        raise SpecError(f"{source}: train: {exc}") from None

    space = _parse_space(check.mapping(raw["space"], "space"), check)

    searcher = SearcherSpec(**check.section(raw.get("searcher", {}), "searcher", SearcherSpec))
    check.integer(searcher.seed, "searcher.seed", low=0)
    check.integer(searcher.n_startup_trials, "searcher.n_startup_trials", low=0)
    check.boolean(searcher.multivariate, "searcher.multivariate")
    check.boolean(searcher.constant_liar, "searcher.constant_liar")

    scheduler = SchedulerSpec(**check.section(raw.get("scheduler", {}), "scheduler", SchedulerSpec))
    check.integer(scheduler.grace_period, "scheduler.grace_period", low=1)
    if scheduler.grace_period > train["epochs"]:
        raise SpecError(f"{source}: scheduler.grace_period={scheduler.grace_period} exceeds train.epochs="
                        f"{train['epochs']}; ASHA needs grace_period <= epochs")
    reduction = check.number(scheduler.reduction_factor, "scheduler.reduction_factor")
    if reduction <= 1:
        raise SpecError(f"{source}: scheduler.reduction_factor must be > 1, got {reduction}")
    check.integer(scheduler.brackets, "scheduler.brackets", low=1)
    if scheduler.report not in REPORTS:
        raise SpecError(f"{source}: {unknown_name('scheduler.report', scheduler.report, REPORTS)}")
    every = check.number(scheduler.checkpoint_every_s, "scheduler.checkpoint_every_s")
    if not every > 0 or math.isinf(every):
        raise SpecError(f"{source}: scheduler.checkpoint_every_s must be a positive number of seconds, got {every}")
    scheduler = dataclasses.replace(scheduler, reduction_factor=reduction, checkpoint_every_s=every)

    resources = ResourceSpec(**check.section(raw.get("resources", {}), "resources", ResourceSpec))
    if resources.execution not in EXECUTIONS:
        raise SpecError(f"{source}: {unknown_name('resources.execution', resources.execution, EXECUTIONS)}")
    cpu = check.number(resources.cpu, "resources.cpu")
    if cpu <= 0:
        raise SpecError(f"{source}: resources.cpu must be > 0, got {cpu}")
    gpu = resources.gpu
    if gpu != "auto":
        gpu = check.number(gpu, "resources.gpu")
        if gpu != 0 and not 0 < gpu <= 1:
            raise SpecError(f"{source}: resources.gpu={gpu} is outside (0, 1]; give a fraction of one GPU per trial, "
                            "'auto', or 0 for CPU only")
    if resources.pack_size is not None:
        check.integer(resources.pack_size, "resources.pack_size", low=1)
    resources = dataclasses.replace(resources, cpu=cpu, gpu=gpu)

    num_samples = check.integer(raw.get("num_samples", 12), "num_samples", low=1)
    max_concurrent = raw.get("max_concurrent_trials")
    if max_concurrent is not None:
        check.integer(max_concurrent, "max_concurrent_trials", low=1)
    max_failures = check.integer(raw.get("max_failures", 3), "max_failures", low=0)
    drivers = check.integer(raw.get("drivers", 1), "drivers", low=1)
    extensions = raw.get("extensions") or []
    if not isinstance(extensions, list):
        raise SpecError(f"{source}: extensions must be a list of trial counts (`sweep extend` writes it), got "
                        f"{_yaml_type(extensions)}; remove it or restore the file")
    extensions = tuple(check.integer(n, "extensions", low=1) for n in extensions)
    if sum(extensions) >= num_samples:
        raise SpecError(f"{source}: extensions add {sum(extensions)} trials but num_samples={num_samples} counts "
                        "them all; raise num_samples or remove extensions")
    if drivers > num_samples - sum(extensions):
        raise SpecError(f"{source}: drivers={drivers} but num_samples={num_samples}: a driver would have no trial; "
                        "lower drivers or raise num_samples")
    storage_path = check.string(raw.get("storage_path", "results"), "storage_path")
    address = raw.get("address")
    if address is not None:
        address = check.string(address, "address")
    dashboard = check.boolean(raw.get("dashboard", False), "dashboard")
    description = raw.get("description") or ""
    points = _parse_points(raw.get("points") or [], space, check)
    simulate = raw.get("simulate")
    if simulate is not None:
        simulate = SimulateSpec(**check.section(simulate, "simulate", SimulateSpec))
        seconds = check.number(simulate.seconds_per_epoch, "simulate.seconds_per_epoch")
        if seconds < 0:
            raise SpecError(f"{source}: simulate.seconds_per_epoch must be >= 0, got {seconds:g}")
        simulate = SimulateSpec(seconds_per_epoch=seconds)
    warm_start = raw.get("warm_start")
    if warm_start is not None:
        warm_start = check.string(warm_start, "warm_start")
    tracking = _parse_tracking(raw.get("tracking") or {}, check)
    confirm = raw.get("confirm")
    if confirm is not None:
        confirm = ConfirmSpec(**check.section(confirm, "confirm", ConfirmSpec))
        if confirm.top is not None:
            check.integer(confirm.top, "confirm.top", low=1)
        check.integer(confirm.seeds, "confirm.seeds", low=1)
        if confirm.epochs is not None:
            check.integer(confirm.epochs, "confirm.epochs", low=1)
        if confirm.top is not None and confirm.top > num_samples:
            raise SpecError(f"{source}: confirm.top={confirm.top} exceeds num_samples={num_samples}; confirm at most "
                            "as many configurations as the sweep tries")
    return SweepSpec(tracking=tracking, confirm=confirm, extensions=extensions, warm_start=warm_start, points=points,
                     simulate=simulate, name=name, space=space, train=train, dataset=dataset, data_dir=data_dir,
                     num_samples=num_samples,
                     searcher=searcher, scheduler=scheduler, resources=resources, max_concurrent_trials=max_concurrent,
                     max_failures=max_failures, drivers=drivers, storage_path=storage_path, address=address,
                     dashboard=dashboard, description=str(description))


def _parse_space(raw: dict, check: "_Check") -> dict[str, Param]:
    check.keys(raw, SEARCHED, "space.")
    if not raw:
        raise SpecError(f"{check.source}: space is empty; give at least lr or latent_dim a range")
    raw = {"variant": "vanilla", **raw}
    space = {name: _parse_param(name, value, check) for name, value in raw.items()}
    variants = space["variant"].options()
    for name, variant in CONDITIONAL.items():
        if name in space and variant not in variants:
            raise SpecError(f"{check.source}: space.{name} is only used by the {variant} variant, which the space "
                            f"never samples (variant: {', '.join(variants)}); remove it or add {variant}")
    return space


def _parse_tracking(raw, check: "_Check") -> TrackingSpec:
    check.section(raw, "tracking", TrackingSpec)
    mlflow = raw.get("mlflow")
    if mlflow is not None:
        mlflow = MlflowSpec(**check.section(mlflow, "tracking.mlflow", MlflowSpec))
        if "uri" not in raw["mlflow"]:
            raise SpecError(f"{check.source}: tracking.mlflow needs a uri, e.g. {{uri: http://127.0.0.1:5000}} "
                            "(the address of `mlflow server`)")
        check.string(mlflow.uri, "tracking.mlflow.uri")
        if mlflow.experiment is not None:
            check.string(mlflow.experiment, "tracking.mlflow.experiment")
    wandb = raw.get("wandb")
    if wandb is not None:
        wandb = WandbSpec(**check.section(wandb, "tracking.wandb", WandbSpec))
        for key in ("project", "entity", "dir"):
            if getattr(wandb, key) is not None:
                check.string(getattr(wandb, key), f"tracking.wandb.{key}")
        if wandb.mode not in WANDB_MODES:
            raise SpecError(f"{check.source}: {unknown_name('tracking.wandb.mode', wandb.mode, WANDB_MODES)}")
    return TrackingSpec(mlflow=mlflow, wandb=wandb)


def _parse_points(raw, space: dict[str, Param], check: "_Check") -> tuple:
    """Explicit configurations to try first: each must set every searched parameter the space would sample."""
    if not isinstance(raw, list):
        raise SpecError(f"{check.source}: points must be a list of mappings, e.g. [{{variant: vanilla, lr: 0.001}}]")
    points = []
    for i, point in enumerate(raw):
        where = f"points[{i}]"
        check.mapping(point, where)
        check.keys(point, SEARCHED, where + ".")
        variant = point.get("variant", space["variant"].values[0] if space["variant"].kind == "fixed" else None)
        for name, param in space.items():
            needed = name not in CONDITIONAL or CONDITIONAL[name] == variant
            if param.kind == "fixed" or not needed:
                if name in point and param.kind == "fixed" and _check_value(name, point[name], check, where) != param.values[0]:
                    raise SpecError(f"{check.source}: {where}.{name}={shown(point[name])} but the space fixes {name} to "
                                    f"{shown(param.values[0])}")
                continue
            if name not in point:
                raise SpecError(f"{check.source}: {where} does not set {name}; give every searched parameter a value")
            value = _check_value(name, point[name], check, f"{where}.{name}")
            inside = value in param.values if param.kind == "choice" else param.low <= value <= param.high
            if not inside:
                raise SpecError(f"{check.source}: {where}.{name}={shown(value)} is outside space.{name}; widen the space")
        points.append({k: _check_value(k, v, check, f"{where}.{k}") for k, v in point.items()
                       if k in space and space[k].kind != "fixed"})
    return tuple(points)


def _parse_param(name: str, value, check: "_Check") -> Param:
    where = f"space.{name}"
    if isinstance(value, dict):
        kinds = [k for k in value if k in DISTRIBUTIONS]
        check.keys(value, DISTRIBUTIONS + ("step",), where + ".")
        if len(kinds) != 1:
            raise SpecError(f"{check.source}: {where} needs exactly one of {', '.join(DISTRIBUTIONS)}, "
                            f"e.g. {{loguniform: [1.0e-4, 1.0e-2]}}")
        kind = kinds[0]
        if kind == "choice":
            options = value["choice"]
            if not isinstance(options, list) or not options:
                raise SpecError(f"{check.source}: {where}.choice must be a non-empty list of values")
            if "step" in value:
                raise SpecError(f"{check.source}: {where}: step applies to ranges, not to choice")
            options = tuple(_check_value(name, v, check, f"{where}.choice") for v in options)
            if len(set(options)) != len(options):
                raise SpecError(f"{check.source}: {where}.choice lists a value twice; list each once")
            return Param(name, "choice", options)
        return _parse_range(name, kind, value, check, where)
    if isinstance(value, list):
        raise SpecError(f"{check.source}: {where} is a bare list; write {{choice: {shown(value)}}} to search over it")
    return Param(name, "fixed", (_check_value(name, value, check, where),))


def _parse_range(name, kind, value, check, where) -> Param:
    bounds = value[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise SpecError(f"{check.source}: {where}.{kind} must be [low, high], got {shown(bounds)}")
    if name == "variant":
        raise SpecError(f"{check.source}: {where} is a name; search it with {{choice: [...]}}")
    integer = kind in ("int", "logint")
    if name == "latent_dim" and not integer:
        raise SpecError(f"{check.source}: {where}: latent_dim is an integer; use int or logint instead of {kind}")
    if name != "latent_dim" and integer:
        raise SpecError(f"{check.source}: {where}: {name} is a real number; use uniform or loguniform instead of {kind}")
    low, high = (check.integer(b, f"{where}.{kind}") if integer else check.number(b, f"{where}.{kind}")
                 for b in bounds)
    if low > high:
        raise SpecError(f"{check.source}: {where}: the range [{low}, {high}] is inverted; write [{high}, {low}]")
    if low == high:
        raise SpecError(f"{check.source}: {where}: the range [{low}, {high}] is empty; widen it or give the value alone")
    if kind.startswith("log") and low <= 0:
        raise SpecError(f"{check.source}: {where}: a log range must be above 0, got low={low}; use a positive low "
                        f"(e.g. {1 if integer else 1e-6}) or {'int' if integer else 'uniform'}")
    for bound in (low, high):
        _check_value(name, bound, check, f"{where}.{kind}")
    step = value.get("step")
    if step is not None:
        step = check.integer(step, f"{where}.step", low=1) if integer else check.number(step, f"{where}.step")
        if step <= 0 or kind.startswith("log"):
            raise SpecError(f"{check.source}: {where}.step must be > 0 and is not allowed on log ranges")
    return Param(name, kind, (), low, high, step)


def _check_value(name, value, check, where):
    """A single value of a searched hyperparameter, as TrainConfig would accept it."""
    if name == "variant":
        if value not in VARIANTS:
            raise SpecError(f"{check.source}: {where}: {unknown_name('variant', value, VARIANTS)}")
        return value
    if name == "latent_dim":
        value = check.integer(value, where)
        if not 1 <= value <= MAX_LATENT_DIM:
            raise SpecError(f"{check.source}: {where}: latent_dim must be between 1 and {MAX_LATENT_DIM}, got "
                            f"{shown(value)}")
        return value
    value = check.number(value, where)
    if name == "lr" and value <= 0:
        raise SpecError(f"{check.source}: {where}: lr must be > 0, got {value}")
    minimum = next((k.minimum for k in knobs() if k.name == name), 0.0)
    if value < minimum:
        raise SpecError(f"{check.source}: {where}: {name} must be >= {minimum:g}, got {value}")
    return value


def _yaml_type(value) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value),
                                                                                          type(value).__name__)


def _section_keys() -> dict[str, tuple]:
    """Each section's prefix and keys: the top level (""), train., space., searcher., scheduler., resources."""
    return {"": TOP_KEYS, "train.": FIXED_TRAIN_KEYS, "space.": SEARCHED,
            **{f"{name}.": tuple(f.name for f in dataclasses.fields(cls))
               for name, cls in (("searcher", SearcherSpec), ("scheduler", SchedulerSpec), ("resources", ResourceSpec),
                                    ("simulate", SimulateSpec), ("tracking", TrackingSpec),
                                    ("tracking.mlflow", MlflowSpec), ("tracking.wandb", WandbSpec))}}


@dataclass
class _Check:
    source: str

    def keys(self, mapping: dict, known, prefix: str) -> None:
        sections = _section_keys()
        for key in mapping:
            if key in known:
                continue
            # `train.lr` for `space.lr`: the key exists, in another section, and that is the hint to give.
            elsewhere = [where + key for where, keys in sections.items()
                         if prefix in sections and where != prefix and key in keys]
            if elsewhere:
                raise SpecError(f"{self.source}: unknown key {shown(prefix + key)} (did you mean "
                                f"{' or '.join(map(repr, elsewhere))}?; {key} is a key of another section)")
            raise SpecError(f"{self.source}: {unknown_name('key', f'{prefix}{key}', [prefix + k for k in known])}")

    def mapping(self, value, where) -> dict:
        if not isinstance(value, dict):
            raise SpecError(f"{self.source}: {where} must be a mapping of keys, not a {_yaml_type(value)}")
        return value

    def section(self, value, where, cls) -> dict:
        value = self.mapping(value, where)
        self.keys(value, [f.name for f in dataclasses.fields(cls)], f"{where}.")
        return value

    def string(self, value, where) -> str:
        if not isinstance(value, str) or not value.strip():
            raise SpecError(f"{self.source}: {where} must be a non-empty string, got {shown(value)}")
        return value

    def boolean(self, value, where) -> bool:
        if not isinstance(value, bool):
            raise SpecError(f"{self.source}: {where} must be true or false, got {shown(value)}")
        return value

    def number(self, value, where) -> float:
        # PyYAML reads 1e-4 (no dot) as a string: accept any string that is plainly a number.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise SpecError(f"{self.source}: {where} must be a number, got {shown(value)}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{self.source}: {where} must be a number, got {shown(value)}")
        if not math.isfinite(value):
            raise SpecError(f"{self.source}: {where} must be finite, got {shown(value)}")
        return float(value)

    def integer(self, value, where, low=None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{self.source}: {where} must be an integer, got {shown(value)}")
        if low is not None and value < low:
            raise SpecError(f"{self.source}: {where} must be >= {low}, got {value}")
        return value
