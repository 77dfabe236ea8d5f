"""The sweep's TensorBoard logs: one event file per trial in its folder, a scalar per metric per epoch.

It stands in for Ray's TBXLoggerCallback, which flushes a trial's file after every result (and
tensorboardX fsyncs on every flush, on the Tune driver's only thread) and steps by reported result,
not by epoch. Here tensorboardX's own writer thread writes the events and flushes every 30 s, a
trial's file is closed when the trial ends, and a result that carries earlier epochs
(sweep.epochs.CARRIED) is logged as one step per epoch. It subclasses TBXLoggerCallback only so that
Tune, which adds its own TensorBoard logger unless one is among the callbacks, does not add a second;
every hook Tune calls is defined here.
"""
from __future__ import annotations

import math
import numbers

from ray.tune.logger import TBXLoggerCallback
from tensorboardX import SummaryWriter
from tensorboardX.proto.summary_pb2 import Summary
from tensorboardX.summary import hparams

from .epochs import CARRIED, epoch_rows

TAG = "ray/tune/"  # Ray's own prefix, so dashboards made for Ray's logs keep working
UNLOGGED = {"config", "pid", "timestamp", "time_total_s", "training_iteration", "epoch", CARRIED}


class TensorBoardLogs(TBXLoggerCallback):
    def __init__(self):
        super().__init__()
        self.writers: dict = {}  # trial -> (SummaryWriter, the last epoch's scalars)

    def log_trial_start(self, trial):
        if trial in self.writers:  # a restarted trial: its run goes on in a fresh event file, not yet ended
            self.writers.pop(trial)[0].close()
        trial.init_local_path()
        self.writers[trial] = (SummaryWriter(trial.local_path, flush_secs=30), {})

    def log_trial_result(self, iteration, trial, result):
        if trial not in self.writers:
            self.log_trial_start(trial)
        writer, _ = self.writers[trial]
        scalars = {}
        for row in epoch_rows(result):
            step = row.get("epoch", result.get("training_iteration"))
            scalars = {TAG + k: float(v) for k, v in row.items() if k not in UNLOGGED
                       and isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)}
            # The epoch's scalars in one event, which TensorBoard reads as it reads an event each (add_scalar):
            # this runs on the Tune driver's only thread, at every epoch of every trial.
            if scalars:
                writer.file_writer.add_summary(
                    Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]),
                    global_step=step)
        self.writers[trial] = (writer, scalars)

    def log_trial_end(self, trial, failed: bool = False):
        if trial not in self.writers:
            return
        writer, scalars = self.writers.pop(trial)
        params = {k: v for k, v in (trial.evaluated_params or {}).items() if isinstance(v, (str, bool, int, float))}
        if params and scalars:  # TensorBoard's HPARAMS tab: the trial's parameters against its last epoch
            for summary in hparams(hparam_dict=params, metric_dict=scalars):
                writer.file_writer.add_summary(summary)
        writer.close()

    def on_experiment_end(self, trials, **info):
        for trial in list(self.writers):
            self.log_trial_end(trial)
