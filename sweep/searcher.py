"""The sweep's Tune searcher: TPE (sweep.tpe) over the space, and an Optuna study that records every trial.

Each trial is written to the study whole when it ends, through Optuna's public API:
- every epoch's val_loss is an intermediate value of the Optuna trial (step = epoch);
- a trial that ran all epochs is COMPLETE with its final val_loss;
- a trial ASHA stopped, or one that diverged, is PRUNED (TPE ranks those below complete ones);
- a trial that errored is FAIL; each carries user attrs `tune_trial_id`, `status` and `epochs`.
It never hands out a configuration already tried (optuna#2021, #3255), and on restore re-seeds from the
study's size so it does not replay its pre-crash proposals. The study's files and storage are
sweep.study's; nothing here reaches into Ray's or Optuna's private state.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import os
import pickle
import time
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from aemodels.pack import derived_seed
from aemodels.status import Status

from . import storage
from .epochs import epoch_rows
from .space import SearchSpace
from .spec import SearcherSpec
from .study import is_database_url, open_storage, snapshot_name, snapshot_study, storage_error, trial_status
from .tpe import TPE

logger = logging.getLogger(__name__)
MAX_REDRAWS = 20
STUDY_URL_ENV = "AESWEEP_STUDY_URL"  # where a restored searcher reopens its study
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# What a searcher-state pickle of this searcher holds under "format"; a pickle without it is of another
# searcher, whose state cannot drive this one (`runner.check_resumable` refuses it).
STATE_FORMAT = "aesweep.searcher/2"


def make_sampler(spec: SearcherSpec, seed: int) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.n_startup_trials,
                                      multivariate=spec.multivariate, group=spec.multivariate,
                                      constant_liar=spec.constant_liar)


class StudySearch(Searcher):
    """Suggests configurations (points first, then random, then TPE) and writes each ended trial to the study.

    Its own state is small and pickled by `save`: the trials running now (their parameters and the
    epochs reported so far), the points still to try and the random generator. The TPE history is
    rebuilt from the study when the searcher is reopened (the study is where every ended trial is).

    One of several drivers of a sweep (`driver` of `drivers`, sweep.drivers) runs its own share of the
    trials (`num_samples`) from its own random stream, and every `SYNC_S` seconds adds the trials the
    other drivers have written to the study to its TPE, so that all of them learn from every trial.
    """

    _LIVE = ("_study", "_tpe", "_rows", "_tried", "_finished", "_seen", "_synced", "_others")  # from the study
    SYNC_S = 1.0
    _driver, _drivers = 0, 1  # class defaults: a pickle without these fields is a single driver's
    _mirror = None  # ... and has no copy of the study in an object store to keep

    def __init__(self, space: SearchSpace, spec: SearcherSpec, storage_url: str, study_name: str, max_epochs: int,
                 points: tuple = (), num_samples: int | None = None, driver: int = 0, drivers: int = 1,
                 mirror: str | None = None):
        super().__init__(metric="val_loss", mode="min")
        self._space, self._max_epochs = space, max_epochs
        # Each driver's own stream: two drivers with one seed would propose the same first trials.
        self._spec = spec if driver == 0 else dataclasses.replace(spec, seed=derived_seed(spec.seed, "driver", driver))
        self._storage_url, self._study_name, self._num_samples = storage_url, study_name, num_samples
        self._driver, self._drivers, self._mirror = driver, drivers, mirror
        self._points = [dict(p) for p in points]
        self._max_concurrent = 0  # 0: no limit of its own (set_max_concurrency)
        self._running: dict[str, dict] = {}  # Tune trial id -> params, values {epoch: val_loss}, start
        self._unwritten: list = []  # ended trials the study could not take yet (a full disk): written at the next end
        self._rng_state = np.random.default_rng(self._spec.seed).bit_generator.state
        self._open(create=True)

    # ---- the study -----------------------------------------------------------------------------

    def _open(self, create: bool = False) -> None:
        storage = open_storage(self._storage_url, shared=self._drivers > 1)
        if create:
            self._study = optuna.create_study(study_name=self._study_name, storage=storage, direction="minimize",
                                              load_if_exists=True, sampler=optuna.samplers.RandomSampler())
        else:
            self._study = optuna.load_study(study_name=self._study_name, storage=storage,
                                            sampler=optuna.samplers.RandomSampler())
        self._tpe = None  # built on first use: a searcher unpickled only to be restored never pays for it

    def _model(self) -> TPE:
        """The TPE over every COMPLETE and PRUNED trial of the study, and what was tried and finished."""
        if self._tpe is None:
            tpe = TPE(self._space.params, self._spec.seed, self._spec.n_startup_trials, self._spec.constant_liar)
            tpe.rng.bit_generator.state = self._rng_state
            self._tried, self._finished, self._others = set(), set(), [0, 0]
            trials = self._study.get_trials(deepcopy=False)
            for trial in trials:
                if not trial.state.is_finished():
                    continue
                if not self._mine(trial):
                    self._count_other(trial)
                elif "tune_trial_id" in trial.user_attrs:
                    self._finished.add(trial.user_attrs["tune_trial_id"])
                if trial.state in FINISHED:
                    tpe.add(trial.params, *_reached(trial.intermediate_values, trial.value))
                    self._tried.add(_key(trial.params))
            self._seen, self._synced = len(trials), time.monotonic()
            for record in self._unwritten:
                self._finished.add(record.user_attrs["tune_trial_id"])
                if record.state in FINISHED:
                    tpe.add(record.params, *_reached(record.intermediate_values, record.value))
                    self._tried.add(_key(record.params))
            self._rows = {tid: tpe.encode(r["params"]) for tid, r in self._running.items()}
            self._tried.update(_key(r["params"]) for r in self._running.values())
            self._tpe = tpe
        return self._tpe

    def _mine(self, trial) -> bool:
        """Whether this driver ran the trial (a study of one driver, or of an older aesweep, has no `driver`)."""
        return trial.user_attrs.get("driver", 0) == self._driver

    def _count_other(self, trial) -> None:
        if "tune_trial_id" not in trial.user_attrs:  # a warm-start trial (sweep.warmstart): no driver ran it
            return
        self._others[0] += 1
        self._others[1] += int(trial.user_attrs.get("epochs", 0))

    def _sync(self) -> None:
        """Add to TPE the trials other drivers have written since the last look (the study only grows:
        trials are added to it whole, in order)."""
        model = self._model()
        if self._drivers == 1 or time.monotonic() - self._synced < self.SYNC_S:
            return
        trials = self._study.get_trials(deepcopy=False)
        for trial in trials[self._seen:]:
            if self._mine(trial) or not trial.state.is_finished():
                continue
            self._count_other(trial)
            if trial.state in FINISHED:
                model.add(trial.params, *_reached(trial.intermediate_values, trial.value))
                self._tried.add(_key(trial.params))
        self._seen, self._synced = len(trials), time.monotonic()

    def others(self) -> tuple[int, int]:
        """(trials, epochs) the other drivers of the sweep have finished, as of the last look at the study."""
        self._sync()
        return self._others[0], self._others[1]

    def _portable(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in self._LIVE}
        if self._tpe is not None:
            state["_rng_state"] = self._tpe.rng.bit_generator.state
        state["format"] = STATE_FORMAT
        return state

    def _reopen(self, state: dict) -> None:
        state.pop("format", None)
        self.__dict__.update(state)
        self._storage_url = os.environ.get(STUDY_URL_ENV) or self._storage_url
        self._open()

    # ---- pickling: Ray saves the searcher (tuner.pkl, searcher-state-*.pkl) --------------------
    # The live study stays out of the pickle: it is reopened where the sweep lives now (STUDY_URL_ENV,
    # set by `sweep resume`), which may be another machine.

    def __getstate__(self):
        return self._portable()

    def __setstate__(self, state):
        self._reopen(dict(state))

    def save(self, checkpoint_path: str):
        """Pickle the searcher, and beside it a copy of the study as of this moment.

        Ray saves this into its experiment folder with its own snapshot and copies both to storage,
        so a sweep whose driver machine is lost resumes with a study that matches Ray's state.
        """
        self._write()
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self._portable(), fh)
        if not is_database_url(self._storage_url) or self._storage_url.startswith("sqlite:///"):
            snapshot = os.path.join(os.path.dirname(checkpoint_path), snapshot_name(self._storage_url))
            snapshot_study(self._storage_url, snapshot)
            if self._mirror:
                self._put_mirror(snapshot)

    def _put_mirror(self, snapshot: str) -> None:
        """Copy the study to the object store (`mirror`) before Ray uploads its snapshot. Ray uploads its files
        in no set order, so a driver killed mid-upload can leave Ray's experiment state in the store newer than
        Ray's copy of the study; this copy, put first, is at least as new as any state of Ray's there."""
        try:
            storage.upload(Path(snapshot), self._mirror)
        except OSError as exc:  # the sweep goes on; a resume elsewhere falls back to Ray's copy
            logger.warning("could not copy the study to %s (%s)", self._mirror, str(exc).splitlines()[0])

    def restore(self, checkpoint_path: str):
        with open(checkpoint_path, "rb") as fh:
            self._reopen(pickle.load(fh))
        # The pickled generator would replay the proposals it made after this save (optuna#3255).
        seed = derived_seed(self._spec.seed, "restore", len(self._study.get_trials(deepcopy=False))) % 2**32
        self._rng_state = np.random.default_rng(seed).bit_generator.state
        self._model()
        for trial_id in [t for t in self._running if t in self._finished]:  # ended after the last save
            del self._running[trial_id]
            self._rows.pop(trial_id, None)

    # ---- Tune's hooks --------------------------------------------------------------------------

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Limit running trials here, not in Tune's ConcurrencyLimiter: the limiter's set of live trials,
        restored from Ray's search_gen_state after a driver kill, can keep trials that already ended
        and never let the resumed sweep start another. Ours is the study's own account."""
        self._max_concurrent = int(max_concurrent)
        return True

    def suggest(self, trial_id: str):
        model = self._model()
        self._sync()
        if self._num_samples is not None and len(self._finished) + len(self._running) >= self._num_samples:
            return Searcher.FINISHED  # Ray's trial counter can lag the study after a resume
        if self._max_concurrent and len(self._running) >= self._max_concurrent:
            return None
        params = self._next_point()
        if params is None:
            running = np.array(list(self._rows.values())) if self._rows else None
            # TPE may keep offering one tried configuration of a small discrete space: then random ones
            for draw in range(2 * MAX_REDRAWS):
                params = model.suggest(running) if draw < MAX_REDRAWS else model.random()
                if _key(params) not in self._tried:
                    break
            else:
                logger.warning("the search space offered only configurations already tried; running a repeat")
        self._running[trial_id] = {"params": params, "values": {},
                                   "start": datetime.datetime.now()}
        self._rows[trial_id] = model.encode(params)
        self._tried.add(_key(params))
        return {**params, **model.fixed}

    def _next_point(self) -> dict | None:
        while self._points:
            point = self._points.pop(0)
            if _key(point) not in self._tried:
                return point
        return None

    def on_trial_result(self, trial_id: str, result: dict):
        record = self._running.get(trial_id)
        if record is None:
            return
        for row in epoch_rows(result):  # a result carries the epochs since the trial's previous one
            value = row.get(self.metric)
            if value is None or not math.isfinite(value):
                continue
            # a restored trial re-reports epochs it had reported: keep the first, as Optuna's report does
            record["values"].setdefault(int(row.get("epoch", result.get("training_iteration"))), float(value))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id not in self._running:
            return
        model = self._model()
        if result:  # Tune hands the final result here instead of to on_trial_result
            self.on_trial_result(trial_id, result)
        record = self._running.pop(trial_id)
        self._rows.pop(trial_id, None)
        status = trial_status(result, error, self._max_epochs)
        values = record["values"]
        value, state = None, TrialState.FAIL
        if status == Status.COMPLETED and math.isfinite(float(result.get(self.metric, math.nan))):
            value, state = float(result[self.metric]), TrialState.COMPLETE
        elif status in (Status.STOPPED, Status.DIVERGED):
            state = TrialState.PRUNED  # as Optuna's tell(PRUNED): the value is the last epoch's, if any
            value = values[max(values)] if values else None
        frozen = optuna.trial.FrozenTrial(
            number=0, trial_id=0, state=state, value=value, datetime_start=record["start"],
            datetime_complete=datetime.datetime.now(), params=record["params"], distributions=distributions(
                self._space.params, record["params"]), user_attrs=self._attrs(trial_id, status, result),
            system_attrs={}, intermediate_values=dict(sorted(values.items())))
        self._finished.add(trial_id)
        if state in FINISHED:
            model.add(record["params"], *_reached(frozen.intermediate_values, value))
        self._unwritten.append(frozen)
        self._write()

    def _attrs(self, trial_id: str, status: str, result: dict | None) -> dict:
        attrs = {"tune_trial_id": trial_id, "status": status, "epochs": int((result or {}).get("epoch", 0))}
        return {**attrs, "driver": self._driver} if self._drivers > 1 else attrs

    def _write(self) -> None:
        """Add the ended trials to the study; keep any it could not take for the next try (never end a sweep)."""
        while self._unwritten:
            try:
                self._study.add_trial(self._unwritten[0])
            except Exception as exc:
                logger.warning("could not record trial %s in the Optuna study (%s); will retry",
                               self._unwritten[0].user_attrs["tune_trial_id"], storage_error(exc))
                return
            self._unwritten.pop(0)


def distributions(space: dict, params: dict) -> dict:
    """The Optuna distribution of each of `params`, as the space's suggest calls declare it (sweep.space)."""
    out = {}
    for name in params:
        param = space[name]
        if param.kind == "choice":
            out[name] = optuna.distributions.CategoricalDistribution(list(param.values))
        elif param.kind in ("int", "logint"):
            out[name] = optuna.distributions.IntDistribution(int(param.low), int(param.high), log=param.log,
                                                             step=int(param.step or 1))
        else:
            out[name] = optuna.distributions.FloatDistribution(param.low, param.high, log=param.log, step=param.step)
    return out


def _key(params: dict) -> tuple:
    """A configuration, hashable: what `no configuration tried twice` compares."""
    return tuple(sorted(params.items()))


def _reached(intermediate_values: dict, value) -> tuple[int, float | None]:
    """(last epoch reported, the value there): how TPE ranks a trial. A trial with no epoch ranks last."""
    if intermediate_values:
        last = max(intermediate_values)
        return last, intermediate_values[last]
    return 0, value
