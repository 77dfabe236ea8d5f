"""Ray's OptunaSearch, made to tell the study what really happened to each trial.

Ray's own OptunaSearch tells every finished trial to Optuna as COMPLETE with its last value, so a
trial ASHA stopped after one epoch competes with nine-epoch trials as an equal. Here:
- every epoch's val_loss is an intermediate value of the Optuna trial (step = epoch);
- a trial that ran all epochs is COMPLETE with its final val_loss;
- a trial ASHA stopped, or one that diverged, is PRUNED (TPE ranks those below complete ones);
- a trial that errored is FAIL; each carries user attrs `tune_trial_id`, `status` and `epochs`.
It also never hands out a configuration the study has already finished (optuna#2021, #3255), and on
restore re-seeds TPE from the study's size so it does not replay its pre-crash proposals.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import sqlite3
import warnings
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from aemodels.pack import derived_seed

from .space import SearchSpace
from .spec import SearcherSpec

logger = logging.getLogger(__name__)
MAX_REDRAWS = 20
STUDY_URL_ENV = "AESWEEP_STUDY_URL"  # where a restored searcher reopens its study
STUDY_FILE = "study.journal"  # the study, in the sweep's folder: Optuna's journal file
LEGACY_STUDY_FILE = "study.db"  # where sweeps of aesweep before 2026-12-02 kept it (SQLite); still read
STUDY_SNAPSHOT = "study-snapshot"  # + the study file's suffix: the study as of Ray's last snapshot, in Ray's folder
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def trial_status(result: dict | None, error: bool, max_epochs: int) -> str:
    """completed | stopped | diverged | error, from a trial's last result."""
    if error or not result:
        return "error"
    if result.get("status") == "diverged":
        return "diverged"
    if result.get("epoch", 0) >= max_epochs:
        return "completed"
    return "stopped"


def study_path(home: Path) -> Path:
    """The sweep's study file: its journal, or the SQLite study.db of a sweep from an older aesweep."""
    legacy = Path(home) / LEGACY_STUDY_FILE
    return legacy if legacy.is_file() and not (Path(home) / STUDY_FILE).is_file() else Path(home) / STUDY_FILE


def study_url(path: Path | str) -> str:
    """What `open_storage` and optuna-dashboard take for a study file: a journal's path, a SQLite URL."""
    return f"sqlite:///{path}" if str(path).endswith(".db") else str(path)


def _is_rdb(url: str) -> bool:
    return "://" in url


def finished_in_study(storage_url: str, study_name: str) -> dict[str, str]:
    """Tune trial id -> status, for every trial the study has recorded as finished."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url, writer=False))
    return {t.user_attrs["tune_trial_id"]: t.user_attrs.get("status", "completed")
            for t in study.get_trials(deepcopy=False) if t.state.is_finished() and "tune_trial_id" in t.user_attrs}


def storage_error(exc: Exception) -> str:
    """The first line of what the storage said, for a one-line message (SQLAlchemy appends pages of context)."""
    return str(getattr(exc, "orig", None) or exc).splitlines()[0]


def snapshot_study(source: str, target: str) -> None:
    """A consistent copy of the study at `source` (a journal's path or a SQLite URL) at path `target`, atomically.

    A journal is copied up to its last complete line (the driver is its only writer); SQLite through
    its backup API, because the live file may have a write-ahead log beside it.
    """
    tmp = f"{target}.tmp"
    if _is_rdb(source):
        with contextlib.closing(sqlite3.connect(source[len("sqlite:///"):])) as src, \
                contextlib.closing(sqlite3.connect(tmp)) as dst:
            src.backup(dst)
    else:
        data = Path(source).read_bytes()
        Path(tmp).write_bytes(data[:data.rfind(b"\n") + 1])
    os.replace(tmp, target)


def snapshot_name(storage_url: str) -> str:
    """The file name of the study's snapshot in Ray's folder: study-snapshot.journal (or .db)."""
    return STUDY_SNAPSHOT + (".db" if _is_rdb(storage_url) else Path(STUDY_FILE).suffix)


def repair_journal(path: Path) -> None:
    """Cut a journal back to its last complete line: what a driver killed mid-write leaves.

    Optuna skips a torn last line when it reads, but the next write would be appended to it and
    make a line that cannot be read in the middle of the file: the whole study would be lost.
    """
    path = Path(path)
    if not path.is_file():
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            logger.warning("the study %s ends in a torn write (%d bytes); dropping it", path, len(data) - keep)
            fh.truncate(keep)


class SweepJournal(JournalFileBackend):
    """Optuna's journal file as the sweep's driver writes it: one unlocked, unsynced append per write.

    Optuna's backend takes a lock file and fsyncs for every append: one of each per reported epoch,
    on the Tune driver's only thread, where the fsync waits behind the checkpoints the trials are
    writing to the same disk (the study's per-epoch report took 18 ms median in one reference CPU
    sweep, 2 ms in others). The driver is the study's only writer, so no lock is needed (and none
    is left for the next driver to wait 30 s on when one is killed). A killed driver loses nothing
    it wrote (the kernel holds it); a machine that loses power may lose the last appends, as the
    SQLite study of older sweeps (WAL, synchronous=NORMAL) could. Reading is Optuna's own.
    """

    def __init__(self, path: str):
        super().__init__(path)
        self._path = path

    def append_logs(self, logs: list[dict]) -> None:
        """Append whole lines, or nothing: a write cut short (a full disk) is taken back before raising."""
        data = memoryview("".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8"))
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                while data:
                    data = data[os.write(fd, data):]
            except OSError:
                os.ftruncate(fd, start)  # half a line would join the next append into an unreadable one
                raise
        finally:
            os.close(fd)


def make_sampler(spec: SearcherSpec, seed: int) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.n_startup_trials,
                                      multivariate=spec.multivariate, group=spec.multivariate,
                                      constant_liar=spec.constant_liar)


def open_storage(url: str, writer: bool = True) -> optuna.storages.BaseStorage:
    """The study's storage: Optuna's journal file (a path), or a SQLite study of an older sweep (a URL).

    A journal is an append-only log of the study's operations, replayed into memory: the driver asks
    TPE and tells Optuna without a database round trip per call (in a study of 50 trials, a
    suggestion takes 7 ms and a trial's three epoch reports and end 1 ms on a 2-core CPU, against
    44 and 17 ms with SQLite in WAL mode; `benchmarks/scaling.py`). Each write is one appended
    line (SweepJournal). A writer first drops a torn last line; readers open nothing for writing
    (a missing journal is an error, not a new study).
    """
    if not _is_rdb(url):
        from optuna.storages import JournalStorage

        if writer:
            repair_journal(Path(url))
            return JournalStorage(SweepJournal(url))
        if not Path(url).is_file():
            raise FileNotFoundError(f"no study journal at {url}")
        return JournalStorage(JournalFileBackend(url))
    # SQLite (older sweeps): write-ahead logging with synchronous=NORMAL, so a commit does not fsync.
    # In WAL mode a crash can lose the last commits but never corrupts the file. Readers leave the
    # mode alone (switching it writes to the file).
    import sqlalchemy

    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    if writer and url.startswith("sqlite"):
        @sqlalchemy.event.listens_for(storage.engine, "connect")
        def _pragmas(connection, _record):
            connection.execute("PRAGMA synchronous=NORMAL")

        storage.engine.dispose()  # connections opened before the listener reconnect with it
        with storage.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    return storage


class StudySearch(OptunaSearch):
    def __init__(self, space: SearchSpace, spec: SearcherSpec, storage_url: str, study_name: str, max_epochs: int,
                 points: tuple = (), num_samples: int | None = None):
        self._spec, self._max_epochs, self._storage_url = spec, max_epochs, storage_url
        self._num_samples, self._max_live = num_samples, None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = make_sampler(spec, spec.seed)
        super().__init__(space, metric="val_loss", mode="min", sampler=sampler, points_to_evaluate=list(points) or None,
                         study_name=study_name, storage=open_storage(storage_url))

    # ---- pickling: Ray saves the searcher (tuner.pkl, searcher-state-*.pkl) --------------------
    # The live study and its SQLite connection stay out of the pickle: the study is reopened where
    # the sweep lives now (STUDY_URL_ENV, set by `sweep resume`), which may be another machine.

    _LIVE = ("_ot_study", "_storage", "_ot_trials")
    _num_samples = _max_live = None  # what a searcher pickled before they existed restores with

    def _portable(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in self._LIVE}
        state["_ot_trial_ids"] = {tid: trial._trial_id for tid, trial in self._ot_trials.items()}
        return state

    def _reopen(self, state: dict) -> None:
        trial_ids = state.pop("_ot_trial_ids", {})
        self.__dict__.update(state)
        self._storage_url = os.environ.get(STUDY_URL_ENV) or self._storage_url
        self._storage = open_storage(self._storage_url)
        self._ot_study = optuna.load_study(study_name=self._study_name, storage=self._storage, sampler=self._sampler)
        self._ot_trials = {tid: optuna.trial.Trial(self._ot_study, number) for tid, number in trial_ids.items()}

    def __getstate__(self):
        return self._portable()

    def __setstate__(self, state):
        self._reopen(dict(state))

    def save(self, checkpoint_path: str):
        """Pickle the searcher, and beside it a copy of the study as of this moment.

        Ray saves this into its experiment folder with its own snapshot and copies both to storage,
        so a sweep whose driver machine is lost resumes with a study that matches Ray's state.
        """
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self._portable(), fh)
        if not _is_rdb(self._storage_url) or self._storage_url.startswith("sqlite:///"):
            snapshot_study(self._storage_url, os.path.join(os.path.dirname(checkpoint_path),
                                                           snapshot_name(self._storage_url)))

    # ---- suggestions ---------------------------------------------------------------------------

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Limit live trials here rather than in Tune's ConcurrencyLimiter, whose set of live trials,
        restored from Ray's snapshot after a driver kill, keeps trials that have since ended: the
        resumed sweep would wait for them forever."""
        self._max_live = max_concurrent
        return True

    def suggest(self, trial_id: str):
        live = sum(1 for tid in self._ot_trials if tid not in self._completed_trials)
        if self._max_live and live >= self._max_live:
            return None
        # The study, not Tune's count, says how many trials have run: after a driver kill Ray's snapshot
        # may miss trials that started and ended after it, which the study (and the tables) hold.
        if self._num_samples is not None and live + sum(
                1 for t in self._ot_study.get_trials(deepcopy=False)
                if t.state.is_finished() and "tune_trial_id" in t.user_attrs) >= self._num_samples:
            return Searcher.FINISHED
        config = super().suggest(trial_id)
        for _ in range(MAX_REDRAWS):
            ot_trial = self._ot_trials[trial_id]
            duplicate = self._finished_with(ot_trial.params)
            if duplicate is None:
                return config
            ot_trial.set_user_attr("skipped", f"duplicate of finished trial {duplicate}")
            self._ot_study.tell(self._ot_trials.pop(trial_id), state=TrialState.FAIL)
            config = super().suggest(trial_id)
        logger.warning("the search space offered only configurations already tried; running a repeat")
        return config

    def _finished_with(self, params: dict):
        """The number of a finished trial with exactly these parameters, if any."""
        for trial in self._ot_study.get_trials(deepcopy=False, states=FINISHED):
            if trial.params == params:
                return trial.number
        return None

    # ---- results -------------------------------------------------------------------------------

    def on_trial_result(self, trial_id: str, result: dict):
        ot_trial = self._ot_trials.get(trial_id)
        value = result.get(self.metric)
        if ot_trial is None or trial_id in self._completed_trials or value is None or not math.isfinite(value):
            return
        with warnings.catch_warnings():  # a restored trial re-reports epochs it had reported: Optuna keeps the first
            warnings.simplefilter("ignore")
            ot_trial.report(value, result.get("epoch", result.get("training_iteration")))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            return
        status = trial_status(result, error, self._max_epochs)
        if result:  # Tune hands the final result here instead of to on_trial_result
            self.on_trial_result(trial_id, result)
        try:
            ot_trial.set_user_attr("tune_trial_id", trial_id)
            ot_trial.set_user_attr("status", status)
            ot_trial.set_user_attr("epochs", int((result or {}).get("epoch", 0)))
            if status == "completed":
                self._ot_study.tell(ot_trial, float(result[self.metric]))
            elif status in ("stopped", "diverged"):
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            else:
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
        except Exception as exc:  # never let bookkeeping end a sweep
            logger.warning("could not record trial %s in the Optuna study: %s", trial_id, exc)
        self._completed_trials.add(trial_id)

    # ---- restore -------------------------------------------------------------------------------

    def restore(self, checkpoint_path: str):
        with open(checkpoint_path, "rb") as fh:
            self._reopen(pickle.load(fh))
        by_number = {t.number: t for t in self._ot_study.get_trials(deepcopy=False)}
        for trial_id, ot_trial in self._ot_trials.items():  # finished after the last searcher save
            if by_number[ot_trial.number].state.is_finished():
                self._completed_trials.add(trial_id)
        known = {t.number for t in self._ot_trials.values()}
        for trial in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number not in known:  # started after the last searcher save, then lost with the driver
                self._ot_study.tell(trial.number, state=TrialState.FAIL)
        # The pickled sampler would replay the random proposals it made after this save (optuna#3255).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._ot_study.sampler = make_sampler(self._spec, derived_seed(self._spec.seed, "restore",
                                                                             len(self._ot_study.trials)) % 2**32)
