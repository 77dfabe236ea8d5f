"""Ray Tune's TensorBoard logs, without an fsync per reported result.

Ray's TBXLoggerCallback flushes a trial's event file after every result, and tensorboardX fsyncs
on every flush: one fsync per reported epoch, on the Tune driver's only thread, which meanwhile
handles no other result and starts no trial. Here tensorboardX's own writer thread writes each
event as it comes and flushes every 30 s, and a trial's file is flushed and closed when the trial
ends, as before. Given in `RunConfig(callbacks=...)`, it takes the place of Ray's default one
(Ray adds its own only when no TBXLoggerCallback is among the callbacks). A result that carries
earlier epochs (sweep.trial.CARRIED) is logged as one step per epoch, as if each had been reported.
"""
from __future__ import annotations

from ray.tune.logger import TBXLoggerCallback
from ray.tune.result import TRAINING_ITERATION
from tensorboardX import SummaryWriter

from .epochs import CARRIED, epoch_rows


class _Writer(SummaryWriter):
    def flush(self):
        """Ray's per-result flush: left to tensorboardX's thread (every 30 s) and to close()."""


class TensorBoardLogs(TBXLoggerCallback):
    def __init__(self):
        super().__init__()
        self._summary_writer_cls = _Writer

    def log_trial_result(self, iteration, trial, result):
        if CARRIED not in result:
            return super().log_trial_result(iteration, trial, result)
        rows = epoch_rows(result)
        # Ray steps by training_iteration, which counts results, not epochs: step each row by its epoch.
        for row in rows:
            super().log_trial_result(iteration, trial, {**rows[-1], **row, TRAINING_ITERATION: row["epoch"]})
