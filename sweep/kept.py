"""The Tune callback that keeps a complete copy of each of Ray's experiment state files beside the
experiment folder (sweep.experiment.keep_state), so that a resume after a crash that cut one short still
has one to restore from (sweep.experiment.mend_state).
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

from ray.tune import Callback

from .experiment import keep_state

MIN_INTERVAL_S = 2.0
MAX_SHARE = 0.05  # of the driver's time: the copies of a large experiment's state take as long as Ray's own


class KeepState(Callback):
    """Looks at the experiment's state files between Tune's steps, every MIN_INTERVAL_S or less often,
    so that at most MAX_SHARE of the driver's time goes to copying them. Only a local experiment folder:
    an object store replaces a whole object at once, so it is never cut short."""

    def __init__(self):
        self.kept_versions: dict[str, tuple] = {}
        self.next_at = 0.0

    def __getstate__(self):  # Ray pickles callbacks with the tuner; what was copied is this driver's own
        return {}

    def __setstate__(self, state):
        self.__init__()

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() >= self.next_at:
            start = time.monotonic()
            self._keep(trials)
            self.next_at = start + max(MIN_INTERVAL_S, (time.monotonic() - start) / MAX_SHARE)

    def on_experiment_end(self, trials, **info):  # after Tune's last snapshot: the copies end complete and current
        self._keep(trials)

    def _keep(self, trials) -> None:
        experiment = Path(trials[0].path).parent if trials else None
        if experiment is not None and experiment.is_absolute() and experiment.is_dir():
            with contextlib.suppress(OSError):  # a full disk costs the copy, not the sweep
                keep_state(experiment, self.kept_versions)
