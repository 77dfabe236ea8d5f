"""A compact live view of a sweep (one status line every few seconds), and the status file (sweep.status)
that `sweep status` reads, kept current as the view is.

It is a Ray Tune Callback, so it sees exactly what the Tune driver sees and nothing else.
"""
from __future__ import annotations

import math
import os
import sys
import time

from ray.tune import Callback

from aemodels.status import FINISHED, Status

from .errors import SweepError
from .study import trial_status
from .spec import SEARCHED
from .status import StatusFile, short
from .telemetry import LiveTotals
from .epochs import epoch_rows


RESUMED_TRIALS_ENV = "AESWEEP_RESUMED_TRIALS"  # how many trials `sweep resume` expects Ray to restore


class Progress(Callback):
    """The view of one Tune driver. In a sweep of several drivers (sweep.drivers) the first one's line
    also counts what the others have finished (`others`: the searcher's account of the shared study)."""

    def __init__(self, num_samples: int, max_epochs: int, interval_s: float = 10.0, stream=None,
                 others=None, sweep_samples: int | None = None):
        self.num_samples, self.max_epochs, self.interval_s = num_samples, max_epochs, interval_s
        self.stream, self.others = stream, others
        self.sweep_samples = sweep_samples or num_samples
        self._reset()

    def _reset(self):
        self.start = time.monotonic()
        self.last_print = 0.0
        self.best = (math.inf, None, None)
        self.restore_checked = False
        # Tune updates trial.last_result after its callbacks: the result in hand is newer, by a whole
        # rung's epochs when trials report only at rungs.
        self.newest_epoch: dict[str, int] = {}
        self.compute = LiveTotals()
        self.status = StatusFile.from_env()  # None outside `sweep run` / `resume` (a test, a notebook)
        self.finished_at_start: int | None = None  # trials a resumed driver restored finished: not this run's rate
        # trial id -> (Tune's status, the sweep's status, epochs) of a trial Tune has ended, which no longer
        # changes: the view's tally of a long sweep then costs a status check per trial.
        self.ended: dict[str, tuple[str, str, int]] = {}

    def __getstate__(self):  # Ray pickles callbacks with the tuner: keep only the settings
        return {"num_samples": self.num_samples, "max_epochs": self.max_epochs, "interval_s": self.interval_s,
                "sweep_samples": self.sweep_samples}

    def __setstate__(self, state):
        self.__dict__.update({"sweep_samples": state["num_samples"], **state})
        self.stream, self.others = None, None
        self._reset()

    def _write(self, line: str) -> None:
        print(line, file=self.stream or sys.stdout, flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.newest_epoch[trial.trial_id] = int(result.get("epoch", 0))
        for row in epoch_rows(result):  # the best epoch may be one a result carries
            self.compute.add(trial.trial_id, row)
            value = row.get("val_loss")
            if value is not None and math.isfinite(value) and value < self.best[0]:
                self.best = (value, trial.trial_id, dict(trial.config))
        if time.monotonic() - self.last_print >= self.interval_s:
            self._write(self.status_line(trials))
        self.keep_status(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.compute.ended(trial.trial_id)
        self.keep_status(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.compute.ended(trial.trial_id)
        self.keep_status(trials)

    def on_experiment_end(self, trials, **info):
        self.keep_status(trials, force=True)

    def on_step_begin(self, iteration, trials, **info):
        # Tune logs a failed restore of its run state and carries on with a fresh experiment (ray#30861):
        # over a sweep folder, that would rebuild the tables from one new trial.
        if self.restore_checked:
            self.keep_status(trials)
            return
        self.restore_checked = True
        expected = int(os.environ.get(RESUMED_TRIALS_ENV, "0"))
        if len(trials) < expected:
            raise SweepError(f"Ray restored {len(trials)} of the sweep's {expected} trials (see Ray's log above); "
                             "the resume is stopped before it changes anything")
        self.keep_status(trials, force=True)

    def keep_status(self, trials, force: bool = False) -> None:
        """Rewrite this driver's status file when it is due (every few seconds; `force`: now)."""
        if self.status is None or not (force or self.status.due()):
            return
        counts, epochs, waiting = self.tally(trials)
        done = sum(n for s, n in counts.items() if s != Status.RUNNING)
        if self.finished_at_start is None:
            self.finished_at_start = done
        counts[Status.PENDING.value] = max(0, self.num_samples - len(trials)) + waiting
        value, trial_id, config = self.best
        best = None if trial_id is None else {
            "val_loss": value, "trial_id": trial_id,
            "params": {k: config[k] for k in SEARCHED if config.get(k) is not None}}
        self.status.write({"state": "running", "counts": counts, "epochs": epochs, "best": best,
                           "num_samples": self.num_samples, "finished_this_run": done - self.finished_at_start,
                           "compute": self.compute.totals()},
                          force=force)

    def tally(self, trials) -> tuple[dict[str, int], int, int]:
        """Trials by status, epochs run, and trials waiting to start, from Tune's own trial list, so that a
        resumed sweep counts what it restored too."""
        counts = {s.value: 0 for s in (Status.RUNNING, *FINISHED)}
        epochs = waiting = 0
        for trial in trials:
            status = trial.status
            if status in ("TERMINATED", "ERROR"):
                ended = self.ended.get(trial.trial_id)
                if ended is None or ended[0] != status:
                    how = Status.ERROR if status == "ERROR" else trial_status(trial.last_result, False, self.max_epochs)
                    ended = self.ended[trial.trial_id] = (status, how, self._epochs(trial))
                counts[ended[1]] += 1
                epochs += ended[2]
                continue
            if status == "RUNNING":
                counts[Status.RUNNING] += 1
            elif status in ("PENDING", "PAUSED"):
                waiting += 1
            epochs += self._epochs(trial)
        return counts, epochs, waiting

    def _epochs(self, trial) -> int:
        return max(int((trial.last_result or {}).get("epoch", 0)), self.newest_epoch.get(trial.trial_id, 0))

    def status_line(self, trials) -> str:
        self.last_print = time.monotonic()
        counts, epochs, _ = self.tally(trials)
        done = sum(n for s, n in counts.items() if s != Status.RUNNING)
        parts = [f"{counts[Status.RUNNING]} running"] + [f"{n} {s}" for s, n in counts.items()
                                                         if n and s != Status.RUNNING]
        line = (f"[{time.monotonic() - self.start:6.0f}s] {done}/{self.num_samples} trials done | "
                f"{', '.join(parts)} | {epochs} epochs | best val_loss {self._best_text()}")
        if self.others is not None:
            trials, other_epochs = self.others()
            line += f" | all drivers: {done + trials}/{self.sweep_samples} trials, {epochs + other_epochs} epochs"
        return line

    def _best_text(self) -> str:
        value, trial_id, config = self.best
        if trial_id is None:
            return "-"
        shown = ", ".join(f"{k}={short(config[k])}" for k in SEARCHED if config.get(k) is not None)
        return f"{value:.5f} ({trial_id}: {shown})"
