"""The sweep's Optuna study on disk: where it lives, how it is opened, written, snapshotted and read.

No Ray: the tables (sweep.results) read the study through this module without starting or importing
Ray. The searcher that writes trials into the study is sweep.searcher's.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend

from aemodels.files import write_atomic, write_bytes_atomic
from aemodels.status import Status

logger = logging.getLogger(__name__)
STUDY_FILE = "study.journal"  # the study, in the sweep's folder: Optuna's journal file
LEGACY_STUDY_FILE = "study.db"  # a SQLite study, as older sweeps keep it; still read
STUDY_SNAPSHOT = "study-snapshot"  # + the study file's suffix: the study as of Ray's last snapshot, in Ray's folder


def trial_status(result: dict | None, error: bool, max_epochs: int) -> Status:
    """completed | stopped | diverged | error, from a trial's last result."""
    if error or not result:
        return Status.ERROR
    if result.get("status") == Status.DIVERGED:
        return Status.DIVERGED
    if result.get("epoch", 0) >= max_epochs:
        return Status.COMPLETED
    return Status.STOPPED


def study_path(home: Path) -> Path:
    """The sweep's study file: its journal, or the SQLite study.db of a sweep from an older aesweep."""
    legacy = Path(home) / LEGACY_STUDY_FILE
    return legacy if legacy.is_file() and not (Path(home) / STUDY_FILE).is_file() else Path(home) / STUDY_FILE


def study_url(path: Path | str) -> str:
    """What `open_storage` and optuna-dashboard take for a study file: a journal's path, a SQLite URL."""
    return f"sqlite:///{path}" if str(path).endswith(".db") else str(path)


def is_database_url(url: str) -> bool:
    return "://" in url


def finished_trials(storage_url: str, study_name: str) -> dict[str, tuple[str, float | None, dict]]:
    """Tune trial id -> (status, when the searcher proposed it in epoch seconds, its parameters), for every
    trial the study has recorded as finished."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url, writer=False))
    return {t.user_attrs["tune_trial_id"]: (t.user_attrs.get("status", Status.COMPLETED),
                                            t.datetime_start.timestamp() if t.datetime_start else None, t.params)
            for t in study.get_trials(deepcopy=False) if t.state.is_finished() and "tune_trial_id" in t.user_attrs}


def finished_in_study(storage_url: str, study_name: str) -> dict[str, str]:
    """Tune trial id -> status, for every trial the study has recorded as finished."""
    return {trial_id: status for trial_id, (status, _, _) in finished_trials(storage_url, study_name).items()}


def storage_error(exc: Exception) -> str:
    """The first line of what the storage said, for a one-line message (SQLAlchemy appends pages of context)."""
    return str(getattr(exc, "orig", None) or exc).splitlines()[0]


def snapshot_study(source: str, target: str) -> None:
    """A consistent copy of the study at `source` (a journal's path or a SQLite URL) at path `target`, atomically.

    A journal is copied up to its last complete line (the driver is its only writer); SQLite through
    its backup API, because the live file may have a write-ahead log beside it.
    """
    if is_database_url(source):
        def backup(tmp: str) -> None:
            with contextlib.closing(sqlite3.connect(source[len("sqlite:///"):])) as src, \
                    contextlib.closing(sqlite3.connect(tmp)) as dst:
                src.backup(dst)

        write_atomic(target, backup, durable=False)
    else:
        data = Path(source).read_bytes()
        write_bytes_atomic(target, data[:data.rfind(b"\n") + 1], durable=False)


def snapshot_name(storage_url: str) -> str:
    """The file name of the study's snapshot in Ray's folder: study-snapshot.journal (or .db)."""
    return STUDY_SNAPSHOT + (".db" if is_database_url(storage_url) else Path(STUDY_FILE).suffix)


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
    writing to the same disk (BENCHMARKS.md, study report). The driver is the study's only writer,
    so no lock is needed (and none is left for the next driver to wait 30 s on when one is killed).
    A killed driver loses nothing it wrote (the kernel holds it); a machine that loses power may lose
    the last appends, as the SQLite study of older sweeps (WAL, synchronous=NORMAL) could. Reading is
    Optuna's own.

    A `shared` journal (a sweep of several drivers) takes Optuna's lock file around each append, as
    Optuna's own backend does, so that the take-back of a write cut short cuts no other driver's.
    """

    def __init__(self, path: str, shared: bool = False):
        from optuna.storages.journal import JournalFileSymlinkLock

        self._lock_file = JournalFileSymlinkLock(path) if shared else None
        super().__init__(path, lock_obj=self._lock_file)
        self._path = path

    def append_logs(self, logs: list[dict]) -> None:
        if self._lock_file is None:
            return self._append(logs)
        self._lock_file.acquire()
        try:
            self._append(logs)
        finally:
            self._lock_file.release()

    def _append(self, logs: list[dict]) -> None:
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


def open_storage(url: str, writer: bool = True, shared: bool = False) -> optuna.storages.BaseStorage:
    """The study's storage: Optuna's journal file (a path), or a SQLite study of an older sweep (a URL).

    A journal is an append-only log of the study's operations, replayed into memory: the driver asks
    TPE and tells Optuna without a database round trip per call, several times cheaper per suggestion
    and per report than SQLite in WAL mode (BENCHMARKS.md, `benchmarks/scaling.py`). Each write is one
    appended line (SweepJournal). A writer first drops a torn last line; readers open nothing for writing
    (a missing journal is an error, not a new study). A `shared` journal has several drivers writing
    to it at once: each append takes Optuna's lock file, and nothing is cut on opening (a line another
    driver is writing would look torn; the sweep repairs the journal before its drivers start).
    """
    if not is_database_url(url):
        from optuna.storages import JournalStorage

        if writer and shared:
            return JournalStorage(SweepJournal(url, shared=True))
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
