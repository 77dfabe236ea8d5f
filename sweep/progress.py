"""A compact live view of a sweep (one status line every few seconds) and its final summary.

It is a Ray Tune Callback, so it sees exactly what the Tune driver sees and nothing else.
"""
from __future__ import annotations

import math
import sys
import time

from ray.tune import Callback

from .searcher import trial_status
from .spec import SEARCHED


class Progress(Callback):
    def __init__(self, num_samples: int, max_epochs: int, interval_s: float = 10.0, stream=None):
        self.num_samples, self.max_epochs, self.interval_s = num_samples, max_epochs, interval_s
        self.stream = stream
        self._reset()

    def _reset(self):
        self.start = time.monotonic()
        self.last_print = 0.0
        self.epochs = 0
        self.running: set = set()
        self.finished: dict[str, str] = {}
        self.best = (math.inf, None, None)

    def __getstate__(self):  # Ray pickles callbacks with the tuner: keep only the settings
        return {"num_samples": self.num_samples, "max_epochs": self.max_epochs, "interval_s": self.interval_s}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.stream = None
        self._reset()

    def _write(self, line: str) -> None:
        print(line, file=self.stream or sys.stdout, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.epochs += 1
        value = result.get("val_loss")
        if value is not None and math.isfinite(value) and value < self.best[0]:
            self.best = (value, trial.trial_id, dict(trial.config))
        if time.monotonic() - self.last_print >= self.interval_s:
            self._write(self.status_line())

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, trial_status(trial.last_result, False, self.max_epochs))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "error")

    def _finish(self, trial, status):
        self.running.discard(trial.trial_id)
        self.finished[trial.trial_id] = status

    def counts(self) -> dict[str, int]:
        counts = {s: 0 for s in ("completed", "stopped", "diverged", "error")}
        for status in self.finished.values():
            counts[status] += 1
        return counts

    def status_line(self) -> str:
        self.last_print = time.monotonic()
        counts = self.counts()
        parts = [f"{len(self.running)} running"] + [f"{n} {s}" for s, n in counts.items() if n]
        return (f"[{time.monotonic() - self.start:6.0f}s] {len(self.finished)}/{self.num_samples} trials done | "
                f"{', '.join(parts)} | {self.epochs} epochs | best val_loss {self._best_text()}")

    def _best_text(self) -> str:
        value, trial_id, config = self.best
        if trial_id is None:
            return "-"
        shown = ", ".join(f"{k}={_short(config[k])}" for k in SEARCHED if config.get(k) is not None)
        return f"{value:.5f} ({trial_id}: {shown})"

    def on_experiment_end(self, trials, **info):
        self._write(self.status_line())


def _short(value):
    return f"{value:.3g}" if isinstance(value, float) else value
