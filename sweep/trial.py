"""What runs inside one Ray Tune trial ("trial" execution): aemodels.train wired to tune.report.

The trial's TrainConfig is the sweep's fixed settings plus the sampled hyperparameters. A trial
reports to Tune where ASHA decides (`Reporting`), each result carrying the epochs since the one
before (`CARRIED`), with the training state as a Tune checkpoint; a retried or restored trial
continues from its newest readable checkpoint (an unreadable one falls back to the one before).
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pyarrow.fs
import ray
from ray import tune
from ray.tune import Checkpoint

from aemodels.status import Status

from .epochs import CARRIED, HISTORY_FILE

STATE_FILE = "state.pt"
RAM_FOLDER = "/dev/shm"
STAGING_PREFIX = "aesweep-epoch-"  # then the writing process's id
RAM_HEADROOM = 1 << 30  # bytes free in RAM_FOLDER for a trial to stage its checkpoints there
logger = logging.getLogger(__name__)


class ComputeClock:
    """A trial's compute per epoch, measured in the process that runs it: `cpu_s` (process time), and
    `wait_s`, the wall time since the previous epoch's row (or since the trial's process started it)
    that went to anything but the epoch's own training (`trained_s`): loading, joining a pack, reporting,
    waiting for the pack's other members. The trial's process runs only this trial (one trial per actor,
    or a packed proxy), and torch's own threads do part of a CPU trial's work, so it is the process's
    time, not the training thread's; what Ray's threads spend beside the trial is included."""

    def __init__(self):
        self.started_at = time.time()
        self.wall, self.cpu = time.monotonic(), time.process_time()

    def lap(self, trained_s: float) -> dict:
        """Since the last lap: the process's CPU seconds and the seconds waited; restarts both clocks."""
        wall, cpu = time.monotonic(), time.process_time()
        values = {"cpu_s": cpu - self.cpu, "wait_s": max(0.0, wall - self.wall - trained_s),
                  "started_at": self.started_at}
        self.wall, self.cpu = wall, cpu
        return values

    def skip(self) -> None:
        """Leave out of the next lap's CPU seconds what this process spent since the last one (reporting)."""
        self.cpu = time.process_time()


@dataclass(frozen=True)
class Reporting:
    """When a trial reports to Tune: at `epochs` (None: every epoch), when it ends, and when a checkpoint
    is due. Ray Tune saves a checkpoint only inside `tune.report`, so a checkpoint between rungs is a
    report of its own; keeping it for the next rung instead would bound nothing a lost worker redoes."""
    epochs: Optional[tuple[int, ...]] = None
    checkpoint_every_s: float = 60.0

    @classmethod
    def of(cls, spec) -> "Reporting":
        return cls(spec.report_epochs, spec.scheduler.checkpoint_every_s)

    def due(self, epoch: int, since_checkpoint_s: float) -> bool:
        return self.epochs is None or epoch in self.epochs or since_checkpoint_s >= self.checkpoint_every_s


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


class TrialRecord:
    """A trial's checkpoint folder: its training state and every row it has reported (history.json).

    Ray's own result.json can lose the rows reported shortly before a worker dies (the driver's copy
    is replaced by the last synced one when the trial restarts), so each checkpoint carries the
    trial's complete history up to it, and the tables are built from that first.
    """

    def __init__(self, scratch: Optional[str] = None, reporting: Reporting = Reporting()):
        self.scratch = scratch  # where each epoch's checkpoint folder is written; None: `staging_folder()`
        self.reporting = reporting
        self.history: list[dict] = []
        self.unreported: list[dict] = []  # epochs since the last result, sent with the next one
        self.checkpointed = time.monotonic()
        if scratch is None:
            remove_orphans()

    def restore(self, read: Callable[[Path], object]) -> Optional[object]:
        """`read(state_file)` on the newest checkpoint that reads; warn about each one that does not."""
        for checkpoint in checkpoint_candidates():
            try:
                with checkpoint.as_directory() as folder:
                    state = read(Path(folder) / STATE_FILE)
                    self.history = json.loads((Path(folder) / HISTORY_FILE).read_text())
                    return state
            except Exception as exc:
                logger.warning("checkpoint %s is unreadable (%s: %s); falling back to the one before it",
                               checkpoint.path, type(exc).__name__, exc)
        if tune.get_checkpoint() is not None:
            logger.warning("no readable checkpoint left; the trial starts again from epoch 0")
        self.history = []
        return None

    def due(self, epoch: int) -> bool:
        """Whether epoch `epoch`, if it does not end the trial, goes to Tune (and wants the state)."""
        return self.reporting.due(epoch, time.monotonic() - self.checkpointed)

    def next_report(self, epoch: int, epochs: int) -> tuple[int, float]:
        """What goes to Tune next, from epoch `epoch` of `epochs` on, unless the trial ends first: the next
        reporting epoch (the last epoch when none is left), and the seconds from now after which a
        checkpoint is due, so that the epoch ending then goes to Tune with the state."""
        reports = self.reporting.epochs
        until = epoch if reports is None else min((e for e in reports if e >= epoch), default=epochs)
        since = time.monotonic() - self.checkpointed
        return until, max(0.0, self.reporting.checkpoint_every_s - since)

    def report(self, row: dict, write_state: Optional[Callable[[Path], None]], due: Optional[bool] = None) -> None:
        """Record one epoch; send it to Tune, with the epochs held since the last result and a checkpoint
        when `write_state` writes the state file, if it is `due` (None: `self.due(epoch)`) or ends the
        trial (completed, diverged)."""
        row = {**row, "timestamp": time.time()}
        self.history = [r for r in self.history if r["epoch"] < row["epoch"]] + [row]
        self.unreported = [r for r in self.unreported if r["epoch"] < row["epoch"]]
        due = self.due(row["epoch"]) if due is None else due
        if row.get("status") not in (Status.COMPLETED, Status.DIVERGED) and not due:
            self.unreported.append(row)
            return
        carried, self.unreported = self.unreported, []
        checkpoint, folder = None, None
        if write_state is not None:
            folder = self._stage(write_state)
            checkpoint = Checkpoint.from_directory(str(folder))
            self.checkpointed = time.monotonic()
        try:
            # When the result leaves the trial, to the microsecond (Ray rounds `timestamp` to whole seconds).
            tune.report({**row, CARRIED: carried, "reported_at": time.time()}, checkpoint=checkpoint)
        finally:  # Ray has copied the checkpoint to the trial's storage inside tune.report
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)

    def _stage(self, write_state: Callable[[Path], None]) -> Path:
        """A new folder holding the state and the history, for Ray to copy to the trial's storage.

        A new folder each time: a file renamed over the last epoch's makes ext4 write it out at once
        (auto_da_alloc), which costs more than the write itself (BENCHMARKS.md). In RAM when there
        is room, so that Ray's copy is the only write to disk; on disk if RAM runs out mid-write.
        """
        root = self.scratch if self.scratch is not None else staging_folder()
        try:
            return self._write_folder(root, write_state)
        except OSError as exc:
            if exc.errno != errno.ENOSPC or self.scratch is not None or root is None:
                raise
            logger.warning("%s is full (%s); staging this checkpoint on disk", root, exc.strerror)
            return self._write_folder(None, write_state)

    def _write_folder(self, root: Optional[str], write_state: Callable[[Path], None]) -> Path:
        folder = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=root))
        try:
            write_state(folder / STATE_FILE)
            (folder / HISTORY_FILE).write_text(json.dumps(self.history))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return folder


def staging_folder() -> Optional[str]:
    """Linux's RAM-backed /dev/shm while it has RAM_HEADROOM free, else None (the temp folder).

    Containers often give /dev/shm 64 MiB (Docker's default), which a few trials' checkpoints would fill.
    """
    try:
        stats = os.statvfs(RAM_FOLDER)
    except (OSError, AttributeError):  # no such folder, or no statvfs (Windows)
        return None
    return RAM_FOLDER if stats.f_bavail * stats.f_frsize >= RAM_HEADROOM else None


def remove_orphans() -> None:
    """Remove the staged checkpoints of this user's processes that died mid-report (SIGKILL, OOM): RAM
    that nothing else would free before a reboot. A folder's name carries its process id."""
    try:
        entries = list(os.scandir(RAM_FOLDER))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(STAGING_PREFIX):
            continue
        pid = entry.name[len(STAGING_PREFIX):].split("-")[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            if entry.stat(follow_symlinks=False).st_uid == os.getuid():
                shutil.rmtree(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


class SharedDataset:
    """The sweep's dataset in Ray's object store, fetched by each worker process once, not once per trial.

    Passed to `tune.with_parameters` in this box, Ray hands every trial the reference, not the data:
    a reused actor then skips deserialising the whole dataset again, a large share of a short trial's
    set-up (BENCHMARKS.md).
    """

    def __init__(self, dataset):
        self.name, self.ref = dataset.name, ray.put(dataset)

    def provide(self, data_dir: Optional[str]) -> None:
        from aemodels.data import provide, provided

        if not provided(self.name, data_dir):
            provide(ray.get(self.ref), data_dir)


def ended_before(finished: Optional[dict[str, Optional[dict]]]) -> bool:
    """Whether this trial ended before its experiment was restored (`finished`: trial ids the study saw end,
    from sweep.experiment.restart_ends).

    Ray restarts every trial its last snapshot lists as unfinished. A trainable that returns without a
    result ends the trial at once, and Tune hands the scheduler and the searcher the last result it had,
    which they have already counted; rewriting Ray's snapshot instead would mean writing its private
    experiment_state file. A snapshot older than the trial's first result gives Tune no result to end it
    with, and Tune fails a trial that ends without its metric: `finished` then holds the trial's last
    row, which is reported again.
    """
    trial_id = tune.get_context().get_trial_id()
    if not finished or trial_id not in finished:
        return False
    if finished[trial_id] is not None:
        from ray.tune.result import AUTO_RESULT_KEYS

        added = {*AUTO_RESULT_KEYS, "done", "trial_id", "should_checkpoint", "experiment_tag", CARRIED}
        tune.report({k: v for k, v in finished[trial_id].items() if k not in added})
    return True


def run_trial(config: dict, *, base: dict, threads: int = 1, dataset: Optional[SharedDataset] = None,
              simulate: Optional[dict] = None, reporting: Reporting = Reporting(),
              finished: Optional[dict[str, Optional[dict]]] = None) -> None:
    """The Tune function trainable of "trial" execution; `dataset` saves each worker reading the files.
    With `simulate` (the spec's `simulate:` section) sweep.simulate's curves stand in for aemodels.train.
    `finished`: see ended_before."""
    if ended_before(finished):
        return
    if simulate is not None:  # no torch in this process: the same record, callbacks and checkpoints
        import functools

        from .simulate import SimState, train as simulated

        train_config, device, load = {**base, **config}, "simulated", SimState.load
        train = functools.partial(simulated, seconds_per_epoch=simulate.get("seconds_per_epoch", 0.0))
    else:
        import torch

        from aemodels import TrainConfig, TrainState, train

        torch.set_num_threads(threads)
        if dataset is not None:
            dataset.provide(base.get("data_dir"))
        train_config, load = TrainConfig.from_dict({**base, **config}), TrainState.load
        device = "cuda" if train_config.device != "cpu" and torch.cuda.is_available() else "cpu"
    where = {"device": device, "execution": "trial", "node_id": ray.get_runtime_context().get_node_id()}
    # The trial's share of its GPU (Tune's `gpu` resource); a CPU trial has its cores to itself.
    share = tune.get_context().get_trial_resources().required_resources.get("GPU", 0.0) if device == "cuda" else 1.0
    clock = ComputeClock()
    record = TrialRecord(reporting=reporting)
    resume = record.restore(load)
    latest = []

    def checkpoint(state):
        latest[:] = [state]

    def report(metrics):
        state = latest.pop() if latest else None  # a diverged epoch reports no state
        write = (lambda path: state.save(path, durable=False)) if state is not None else None
        spent = {**clock.lap(metrics["epoch_s"]), "device_s": share * metrics["epoch_s"]}
        record.report({**metrics, **where, **spent}, write)
        clock.skip()

    train(train_config, report=report, checkpoint=checkpoint, resume=resume)
