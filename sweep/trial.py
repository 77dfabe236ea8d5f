"""What runs inside one Ray Tune trial ("trial" execution): aemodels.train wired to tune.report.

The trial's TrainConfig is the sweep's fixed settings plus the sampled hyperparameters. After every
epoch the training state goes into a Tune checkpoint with the epoch's metrics; a retried or restored
trial continues from its newest readable checkpoint (an unreadable one falls back to the one before).
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

import pyarrow.fs
import ray
from ray import tune
from ray.tune import Checkpoint

STATE_FILE = "state.pt"
logger = logging.getLogger(__name__)


def checkpoint_candidates() -> list[Checkpoint]:
    """This trial's checkpoints, newest first, starting with the one Tune restores."""
    latest = tune.get_checkpoint()
    if latest is None:
        return []
    fs, parent = latest.filesystem, os.path.dirname(latest.path.rstrip("/"))
    siblings = [info.path for info in fs.get_file_info(pyarrow.fs.FileSelector(parent))
                if info.type == pyarrow.fs.FileType.Directory and os.path.basename(info.path).startswith("checkpoint_")]
    older = sorted((p for p in siblings if os.path.basename(p) < os.path.basename(latest.path.rstrip("/"))),
                   reverse=True)
    return [latest] + [Checkpoint(p, filesystem=fs) for p in older]


def load_newest(read: Callable[[Path], object]) -> Optional[object]:
    """`read(state_file)` on the newest checkpoint that reads; warn about each one that does not."""
    for checkpoint in checkpoint_candidates():
        try:
            with checkpoint.as_directory() as folder:
                return read(Path(folder) / STATE_FILE)
        except Exception as exc:
            logger.warning("checkpoint %s is unreadable (%s: %s); falling back to the one before it",
                           checkpoint.path, type(exc).__name__, exc)
    if tune.get_checkpoint() is not None:
        logger.warning("no readable checkpoint left; the trial starts again from epoch 0")
    return None


def run_trial(config: dict, *, base: dict, threads: int = 1) -> None:
    """The Tune function trainable of "trial" execution."""
    import torch

    from aemodels import TrainConfig, TrainState, train

    torch.set_num_threads(threads)
    train_config = TrainConfig.from_dict({**base, **config})
    resume = load_newest(TrainState.load)
    device = "cuda" if train_config.device != "cpu" and torch.cuda.is_available() else "cpu"
    where = {"device": device, "execution": "trial", "node_id": ray.get_runtime_context().get_node_id()}
    with tempfile.TemporaryDirectory(prefix="aesweep-") as scratch:
        saved = []

        def checkpoint(state):
            state.save(Path(scratch) / STATE_FILE)
            saved.append(True)

        def report(metrics):
            metrics = {**metrics, **where}
            tune.report(metrics, checkpoint=Checkpoint.from_directory(scratch) if saved else None)
            saved.clear()

        train(train_config, report=report, checkpoint=checkpoint, resume=resume)
