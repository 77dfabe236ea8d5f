"""train(config) -> TrainResult: the one training function every caller uses (tests, sweeps, retrain).

Pure: everything comes from its arguments and nothing global changes (the RNG streams are private
generators keyed by the config's seed). It trains a pack of one, so a packed sweep member computes
exactly what it would compute here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .config import ConfigError, TrainConfig
from .data import load_dataset
from .pack import Pack, TrainState
from .status import Status

# Fields that may differ between a saved state and the config that resumes it: they say how long or
# where to train, not what is trained.
RESUMABLE_CHANGES = ("epochs", "device", "data_dir", "cuda_graphs", "matmul_precision")

Report = Callable[[dict], Optional[bool]]


@dataclass
class TrainResult:
    config: TrainConfig
    history: list[dict]  # one row per epoch: epoch, train_loss, val_loss, epoch_s, train_s, images_per_s, ...
    status: Status  # completed | stopped | diverged
    model: torch.nn.Module  # the trained variant, on the CPU, in eval mode
    state: TrainState  # to save, or to continue with train(..., resume=state)

    @property
    def val_loss(self) -> float:
        return self.history[-1]["val_loss"] if self.history else float("nan")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA device is available; use device='auto' or 'cpu'")
    return torch.device(device)


def train(config: TrainConfig, report: Optional[Report] = None, *,
          checkpoint: Optional[Callable[[TrainState], None]] = None,
          resume: Optional[TrainState] = None) -> TrainResult:
    """Train `config.epochs` epochs (or continue `resume` up to that many).

    After every epoch `checkpoint(state)` (if given) receives the state to save, then `report(metrics)`
    receives the epoch's row; a True return stops training (status "stopped"). A NaN or infinite loss
    ends training with status "diverged".
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train() needs a TrainConfig, got {type(config).__name__}")
    state = TrainState.initial(config) if resume is None else _resumable(resume, config)
    dataset = load_dataset(config.dataset, config.data_dir, resolve_device(config.device))
    pack = Pack.for_config(config, dataset)
    pack.add(0, state)
    status = Status.COMPLETED
    while pack.members[0].epoch < config.epochs:
        metrics = pack.run_epoch()[0]
        if metrics["status"] == Status.DIVERGED:
            status = Status.DIVERGED
            if report is not None:
                report(metrics)
            break
        if checkpoint is not None:
            checkpoint(pack.snapshot(0))
        if report is not None and report(metrics) and metrics["status"] != Status.COMPLETED:
            status = Status.STOPPED
            break
    final = pack.snapshot(0)
    final.status = status.value  # a plain str: torch.load(weights_only=True) reads no enum
    return TrainResult(config, final.history, status, final.to_module(), final)


def _resumable(state: TrainState, config: TrainConfig) -> TrainState:
    saved, wanted = state.config.to_dict(), config.to_dict()
    for key in saved:
        if key not in RESUMABLE_CHANGES and saved[key] != wanted[key]:
            raise ConfigError(f"cannot resume: the saved state has {key}={saved[key]!r} but the config has "
                              f"{key}={wanted[key]!r}; resume with the saved config")
    return TrainState(config, state.epoch, state.model, state.exp_avg, state.exp_avg_sq, state.adam_step,
                      list(state.history), "running")
