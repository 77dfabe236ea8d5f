"""Simulated training: learning curves fitted to real runs of this project (data/curves.json, recorded by
benchmarks/record_curves.py), replayed through the same trial and packed code paths as real training.

It owns the curve model, a stand-in for `aemodels.train` (trial execution) and one for `aemodels.Pack`
(packed execution). It imports no torch, trains nothing and touches no GPU: a sweep with `simulate:` runs
its whole orchestration (trials, trainers on declared GPUs, ASHA, checkpoints, tables) on any machine.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import time
from pathlib import Path
from typing import Callable, Hashable, Optional

from aemodels.status import Status

CURVES_FILE = Path(__file__).parent / "data" / "curves.json"
EPOCH_NOISE = 0.01  # relative per-epoch jitter of a simulated val_loss (seeded per trial)
TRIAL_NOISE = 0.03  # relative per-trial offset: two trials of one config differ as two seeds would
MAX_TAIL_RATE = 0.3  # beyond the recorded epochs a curve falls as e^-rate, the rate of its last recorded epochs


def _tail_rate(values: list[float]) -> float:
    """The power-law rate of the recorded curve's last epochs (from the middle epoch to the last), clamped."""
    last, middle = len(values), max(1, len(values) // 2)
    if last == middle or values[middle - 1] <= 0 or values[-1] <= 0:
        return 0.0
    rate = math.log(values[middle - 1] / values[-1]) / math.log(last / middle)
    return min(MAX_TAIL_RATE, max(0.0, rate))


@functools.lru_cache(maxsize=4)
def recorded_runs(path: str = str(CURVES_FILE)) -> dict[str, list[tuple[dict, list[float], float]]]:
    """variant -> [(config, log val_loss per recorded epoch, tail rate)], read once per process."""
    runs = json.loads(Path(path).read_text())["runs"]
    by_variant: dict[str, list] = {}
    for run in runs:
        values = [v for v in run["val_loss"] if math.isfinite(v) and v > 0]
        if values:
            by_variant.setdefault(run["config"]["variant"], []).append(
                (run["config"], [math.log(v) for v in values], _tail_rate(values)))
    return by_variant


def _distance(a: dict, b: dict) -> float:
    """How far two configs of one variant are apart, in decades of lr and doublings of latent_dim / 2."""
    d = abs(math.log10(a["lr"]) - math.log10(b["lr"])) + abs(math.log2(a["latent_dim"]) - math.log2(b["latent_dim"])) / 2
    if a.get("noise_factor") is not None and b.get("noise_factor") is not None:
        d += abs(a["noise_factor"] - b["noise_factor"]) / 0.6
    if a.get("sparsity_weight") and b.get("sparsity_weight"):
        d += abs(math.log10(a["sparsity_weight"]) - math.log10(b["sparsity_weight"])) / 3
    return d


class Curve:
    """A trial's simulated learning curve: the recorded curves of its variant averaged in log space, each
    weighted by how near its config is (inverse squared distance); past the recorded epochs it falls as a
    power law at their weighted tail rate. Seeded noise depends only on the trial's settings."""

    def __init__(self, settings: dict, path: str = str(CURVES_FILE)):
        runs = recorded_runs(path)
        variant = settings.get("variant", "vanilla")
        if variant not in runs:
            raise ValueError(f"no recorded curves for variant {variant!r} in {path} (recorded: {', '.join(sorted(runs))})")
        config = {"lr": settings.get("lr", 1e-3), "latent_dim": settings.get("latent_dim", 32),
                  "noise_factor": settings.get("noise_factor"), "sparsity_weight": settings.get("sparsity_weight")}
        recorded = min(len(logs) for _, logs, _ in runs[variant])
        weights = [(1.0 / (_distance(config, c) + 0.05) ** 2, logs, rate) for c, logs, rate in runs[variant]]
        total = sum(w for w, _, _ in weights)
        self.logs = [sum(w * logs[e] for w, logs, _ in weights) / total for e in range(recorded)]
        self.tail_rate = sum(w * rate for w, _, rate in weights) / total
        key = json.dumps({k: settings.get(k) for k in ("variant", "latent_dim", "lr", "noise_factor",
                                                        "sparsity_weight", "seed")}, sort_keys=True)
        # Python's hash() is salted per process: a digest keeps a trial's curve the same in every worker.
        self.seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
        self.offset = 1.0 + TRIAL_NOISE * random.Random(self.seed).gauss(0.0, 1.0)

    def val_loss(self, epoch: int) -> float:
        recorded = len(self.logs)
        mean = math.exp(self.logs[min(epoch, recorded) - 1])
        if epoch > recorded:
            mean *= (epoch / recorded) ** -self.tail_rate
        jitter = 1.0 + EPOCH_NOISE * random.Random(self.seed + epoch).gauss(0.0, 1.0)
        return max(1e-6, mean * self.offset * jitter)

    def row(self, epoch: int, epochs: int, epoch_s: float, pack_size: int = 1) -> dict:
        """The metrics row aemodels.Pack.run_epoch would give for this epoch (same keys)."""
        val = self.val_loss(epoch)
        return {"epoch": epoch, "train_loss": val * 1.05, "val_loss": val, "epoch_s": epoch_s, "train_s": epoch_s,
                "images_per_s": None, "pack_size": pack_size,
                "status": Status.COMPLETED if epoch >= epochs else Status.RUNNING}


# ---- a trial's state: a few hundred bytes instead of a model --------------------------------------

class SimState:
    """What a simulated trial checkpoints: its settings, epoch and history (TrainState's role)."""

    def __init__(self, settings: dict, epoch: int = 0, history: Optional[list] = None):
        self.settings, self.epoch, self.history = dict(settings), epoch, list(history or [])

    @classmethod
    def initial(cls, settings: dict) -> "SimState":
        return cls(settings)

    def advanced(self, row: dict) -> "SimState":
        return SimState(self.settings, row["epoch"], self.history + [row])

    def to_bytes(self) -> bytes:
        return json.dumps({"format": "simulated-1", "settings": self.settings, "epoch": self.epoch,
                           "history": self.history}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "SimState":
        values = json.loads(data)
        if values.get("format") != "simulated-1":
            raise ValueError("not a simulated trial's checkpoint")
        return cls(values["settings"], values["epoch"], values["history"])

    def save(self, path, durable: bool = True) -> None:  # `durable` as TrainState.save; a small file needs no fsync
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path) -> "SimState":
        return cls.from_bytes(Path(path).read_bytes())


# ---- the stand-ins ----------------------------------------------------------------------------------

def train(settings: dict, report: Optional[Callable[[dict], object]] = None, *,
          checkpoint: Optional[Callable[[SimState], None]] = None, resume: Optional[SimState] = None,
          seconds_per_epoch: float = 0.0) -> SimState:
    """aemodels.train's contract on a simulated curve: checkpoint(state), then report(row), every epoch."""
    curve, epochs = Curve(settings), int(settings["epochs"])
    state = resume if resume is not None else SimState.initial(settings)
    while state.epoch < epochs:
        if seconds_per_epoch:
            time.sleep(seconds_per_epoch)
        row = curve.row(state.epoch + 1, epochs, seconds_per_epoch)
        state = state.advanced(row)
        if checkpoint is not None:
            checkpoint(state)
        if report is not None and report(row) and row["status"] != Status.COMPLETED:
            break
    return state


class SimPack:
    """aemodels.Pack's interface as PackTrainer uses it; a round takes seconds_per_epoch per member."""

    device = "simulated"

    def __init__(self, seconds_per_epoch: float = 0.0):
        self.seconds_per_epoch = seconds_per_epoch
        self.members: dict[Hashable, SimState] = {}
        self.curves: dict[Hashable, Curve] = {}

    def __len__(self) -> int:
        return len(self.members)

    @property
    def keys(self) -> list:
        return list(self.members)

    def update(self, keep, add: Optional[dict] = None) -> None:
        self.members = {k: self.members[k] for k in keep}
        for key, state in (add or {}).items():
            self.members[key] = state
            self.curves[key] = Curve(state.settings)
        self.curves = {k: self.curves[k] for k in self.members}

    def retain(self, keys) -> None:
        self.update([k for k in self.members if k in set(keys)])

    def snapshot(self, key: Hashable) -> SimState:
        return self.members[key]

    def run_epoch(self) -> dict[Hashable, dict]:
        if not self.members:
            return {}
        took = self.seconds_per_epoch * len(self.members)
        if took:
            time.sleep(took)
        rows = {}
        for key, state in self.members.items():
            row = self.curves[key].row(state.epoch + 1, int(state.settings["epochs"]), took, len(self.members))
            self.members[key] = state.advanced(row)
            rows[key] = dict(row)
        return rows
