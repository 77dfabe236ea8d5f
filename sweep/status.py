"""A running sweep seen from outside: the status.json its driver keeps current, read back by `sweep status`
and `sweep ls`, and `sweep stop`, which asks that driver to stop cleanly as SIGTERM does.

It owns that file (format, throttled atomic writes, the object-store copy) and the driver's state (running,
stopping, stopped, finished); the live counts come from sweep.progress, the final ones from the tables.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import signal
import socket
import time
from pathlib import Path
from typing import Optional

from aemodels.files import write_text_atomic
from aemodels.status import FINISHED, Status

from . import storage
from .errors import ResultsError, SweepError

STATUS_FILE = "status.json"  # the first driver's; driver k (sweep.drivers) keeps status-<k>.json beside it
STOP_FILE = ".stop-requested"  # `sweep stop` was asked (the PID it signalled): a second one must not stop at once
STATUS_ENV = "AESWEEP_STATUS"  # which status file this process's Tune driver keeps (JSON: home, remote, driver, started)
WRITE_EVERY_S = 3.0  # a local write is a few hundred bytes: cheap, and `sweep status` is never older than this
UPLOAD_EVERY_S = 10.0  # an object-store PUT per write would cost more than the sweep's other traffic
SILENT_S = 120.0  # a driver on another host that has not written for this long is taken as gone
COUNTED = tuple(s.value for s in (Status.RUNNING, Status.PENDING, *FINISHED))


def short(value):
    """A parameter's value as the progress line and `sweep status` show it: floats to 3 significant digits."""
    return f"{value:.3g}" if isinstance(value, float) else value


def status_name(driver: int = 0) -> str:
    return STATUS_FILE if driver == 0 else f"status-{driver}.json"


def lock_path(home: Path) -> Path:
    """The lock `runner.claim` holds while a driver of the sweep runs."""
    return home.parent / f".{home.name}.lock"


# ---- the driver's side ------------------------------------------------------------------------

class StatusFile:
    """The status file one Tune driver keeps: replaced whole at most every WRITE_EVERY_S (and copied to the
    object store at most every UPLOAD_EVERY_S), unless a write is forced (the start, the end)."""

    def __init__(self, home: Path, driver: int = 0, remote: Optional[str] = None, started: Optional[float] = None):
        self.home, self.driver, self.remote = Path(home), driver, remote
        self.started = time.time() if started is None else started
        self.path = self.home / status_name(driver)
        self.last_write = self.last_upload = -math.inf
        self.upload_failed = False

    @classmethod
    def from_env(cls) -> Optional["StatusFile"]:
        """The status file of this process's driver, when `kept` set one up (Ray rebuilds the Progress callback
        from its pickle on `sweep resume`, so the folder, which may have moved since, cannot travel with it)."""
        raw = os.environ.get(STATUS_ENV)
        if not raw:
            return None
        try:
            values = json.loads(raw)
            return cls(Path(values["home"]), int(values["driver"]), values.get("remote"), float(values["started"]))
        except (ValueError, KeyError, TypeError):
            return None

    def due(self) -> bool:
        return time.monotonic() - self.last_write >= WRITE_EVERY_S

    def write(self, values: dict, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_write < WRITE_EVERY_S:
            return
        self.last_write = now
        document = {"driver": {"pid": os.getpid(), "host": socket.gethostname(), "index": self.driver},
                    "started": self.started, "updated": time.time(), **values}
        text = json.dumps(document, indent=1, default=_plain)
        try:
            _replace(self.path, text)
        except OSError:  # a full disk must not stop the sweep; the next write tries again
            return
        if self.remote and (force or now - self.last_upload >= UPLOAD_EVERY_S):
            self.last_upload = now
            try:
                storage.upload(self.path, storage.join(self.remote, self.path.name))
            except OSError as exc:
                if not self.upload_failed:  # once: the sweep itself goes on
                    self.upload_failed = True
                    print(f"warning: cannot copy {self.path.name} to {self.remote} ({str(exc).splitlines()[0]}); "
                          "`sweep status` elsewhere than this machine will lag", flush=True)

    def current(self) -> Optional[dict]:
        return _read_json(self.path)


def _replace(path: Path, text: str) -> None:
    """Temp file + rename: a reader sees the old file or the new one, never half of one. No fsync: a status
    lost to a power cut is rewritten within seconds, or rebuilt from the tables."""
    write_text_atomic(path, text, durable=False)


def _plain(value):
    return value.item() if hasattr(value, "item") else str(value)


@contextlib.contextmanager
def kept(home: Path, spec, driver: int = 0):
    """While a driver runs: its status file says so (with its PID and host, for `sweep stop`), and the
    Progress callback this process builds or restores keeps it current. A driver that ends by an error
    leaves it `stopped`; a clean end is written by `write_final` (the first driver) or Progress."""
    from .results import remote_home

    status = StatusFile(home, driver, remote_home(spec))
    saved = os.environ.get(STATUS_ENV)
    os.environ[STATUS_ENV] = json.dumps({"home": str(home), "driver": driver, "remote": status.remote,
                                         "started": status.started})
    if driver == 0:
        with contextlib.suppress(OSError):
            (home / STOP_FILE).unlink()  # left by a `sweep stop` of an earlier run
    status.write({"state": "running", "finished_this_run": 0}, force=True)  # Progress adds the counts
    try:
        yield status
    except BaseException as exc:
        values = status.current() or {}
        if values.get("state") == "running":
            status.write({**values, "state": "stopped", "why": f"{type(exc).__name__}: {str(exc)[:200]}"}, force=True)
        raise
    finally:
        if saved is None:
            os.environ.pop(STATUS_ENV, None)
        else:
            os.environ[STATUS_ENV] = saved


def write_final(found, state: str, why: Optional[str] = None) -> None:
    """The first driver's last word, from the tables it has just written: the whole sweep's counts, every
    driver's, exactly as the tables have them."""
    from .telemetry import table_totals

    status = StatusFile.from_env()
    if status is None or status.driver != 0:
        status = StatusFile(found.home, 0, None)
    status.write({**table_counts(found.trials, found.spec.num_samples), "state": state, "scope": "sweep",
                  "best": _best_from_tables(found), "why": why, "compute": table_totals(found.trials)}, force=True)


def table_counts(trials, num_samples: int) -> dict:
    counts = {s: 0 for s in COUNTED}
    for status, n in trials["status"].value_counts().items():
        counts[status if status in counts else Status.RUNNING.value] += int(n)
    return {"counts": counts, "epochs": int(trials["epochs"].sum()) if len(trials) else 0, "num_samples": num_samples}


def _best_from_tables(found) -> Optional[dict]:
    from .spec import SEARCHED

    row = found.best_row()
    if row is None:
        return None
    params = {k: row[k] for k in SEARCHED if k in row and not _missing(row[k])}
    return {"val_loss": float(row["final_val_loss"]), "trial_id": found.best_trial, "params": params}


def _missing(value) -> bool:
    import pandas as pd

    return value is None or bool(pd.isna(value))


# ---- reading ----------------------------------------------------------------------------------

def _read_json(path: Path) -> Optional[dict]:
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or damaged by hand: the tables or the lock say the rest
        return None
    return values if isinstance(values, dict) else None


def _newest_copy(home: Path, name: str, remote: Optional[str]) -> Optional[dict]:
    """The local status file, or the object store's copy when that is newer (a driver on another machine)."""
    local = _read_json(home / name)
    if not remote:
        return local
    try:
        data = storage.read_bytes(storage.join(remote, name))
        theirs = json.loads(data) if data is not None else None
    except (OSError, ValueError):
        theirs = None
    if not isinstance(theirs, dict):
        return local
    return theirs if local is None or theirs.get("updated", 0) > local.get("updated", 0) else local


def lock_held(home: Path) -> bool:
    """Whether a driver holds the sweep's lock now (on this machine, or a file system shared with it)."""
    from filelock import FileLock, Timeout

    path = lock_path(home)
    if not path.exists():
        return False
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    except OSError:  # cannot even open it: no driver of ours could either
        return False
    lock.release()
    return False


def read_status(name_or_dir: str, storage_path: str = "results") -> dict:
    """How the sweep stands: its state, counts by trial status, epochs, best so far, elapsed and remaining
    time. From status.json while its driver runs (every driver's file, summed) or once it has written its
    last word; from the tables for a sweep that has none (older sweeps)."""
    from .results import find_home, read_spec, remote_home

    home = find_home(name_or_dir, storage_path)
    spec = read_spec(home)
    remote = remote_home(spec)
    first = _newest_copy(home, STATUS_FILE, remote)
    state, why = _driver_state(home, first)
    if first is not None and (first.get("scope") == "sweep" or state != "running"):
        status = dict(first)
    elif first is not None:
        files = [first] + [f for f in (_newest_copy(home, status_name(k), remote) for k in range(1, spec.all_drivers)) if f]
        status = _merged(files, spec.num_samples)
    else:
        status = _from_tables(home, spec)
    status.update({"name": spec.name, "home": str(home), "state": state, "why": why,
                   "num_samples": spec.num_samples, "recorded": (first or {}).get("state")})
    status.setdefault("counts", {s: 0 for s in COUNTED})
    status["counts"] = {s: int(status["counts"].get(s, 0)) for s in COUNTED}
    if state not in ("running", "stopping"):  # nothing runs, and nothing starts until `sweep resume`
        status["counts"]["pending"] = 0
        status["counts"][Status.RUNNING] = 0
    status["done"] = sum(status["counts"][s] for s in FINISHED)
    started, updated = status.get("started"), status.get("updated")
    end = time.time() if state in ("running", "stopping") else updated
    status["elapsed_s"] = (end - started) if started and end else None
    status["remaining_s"] = _remaining(status) if state in ("running", "stopping") else None
    return status


def _driver_state(home: Path, first: Optional[dict]) -> tuple[str, Optional[str]]:
    """running | stopping | stopped | finished, and why when it is not what the file itself says."""
    recorded = (first or {}).get("state")
    driver = (first or {}).get("driver") or {}
    here = driver.get("host") in (None, socket.gethostname())
    if here and lock_held(home):
        stop = _read_json_text(home / STOP_FILE)
        if stop is not None and stop == str(driver.get("pid")):
            return "stopping", "`sweep stop` asked it to stop"
        return "running", None
    if recorded in ("finished", "stopped"):
        return recorded, first.get("why")
    if recorded == "running":
        if here:
            return "stopped", "its driver ended without finishing (killed?)"
        silent = time.time() - float(first.get("updated", 0))
        if silent > SILENT_S:
            return "stopped", f"no word from its driver on {driver.get('host')} for {silent:.0f} s"
        return "running", None
    return _state_from_tables(home), None


def _read_json_text(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _state_from_tables(home: Path) -> str:
    """A sweep without a status file (an older aesweep): finished if its tables count every trial finished."""
    from .results import read_spec

    try:
        import pandas as pd

        trials = pd.read_parquet(home / "trials.parquet", columns=["status"])
        num_samples = read_spec(home).num_samples
    except (OSError, ValueError, KeyError, ResultsError):
        return "stopped"
    return "finished" if trials["status"].isin(FINISHED).sum() >= num_samples else "stopped"


def _from_tables(home: Path, spec) -> dict:
    """The status of a sweep without a status file, from its tables (rebuilt from Ray's folder if it has none)."""
    from .results import build_tables, load_results
    from .telemetry import table_totals

    try:
        found = load_results(str(home)) if (home / "trials.parquet").is_file() else build_tables(home, spec)
    except ResultsError:
        raise  # already one line with its fix
    except Exception as exc:  # Ray's folder half written: the sweep never got going
        raise ResultsError(f"{home}: neither a status file nor tables can be read ({type(exc).__name__}); "
                           f"`sweep analyze {home}` says what is wrong") from None
    return {**table_counts(found.trials, spec.num_samples), "best": _best_from_tables(found), "source": "tables",
            "compute": table_totals(found.trials)}


def _merged(files: list[dict], num_samples: int) -> dict:
    """The first driver's status with every driver's counts, epochs and trials finished in this run added up,
    and the best of all."""
    from .telemetry import added

    merged = dict(files[0])
    merged["counts"] = {s: sum(int((f.get("counts") or {}).get(s, 0)) for f in files) for s in COUNTED}
    merged["epochs"] = sum(int(f.get("epochs", 0)) for f in files)
    merged["finished_this_run"] = sum(int(f.get("finished_this_run", 0)) for f in files)
    bests = [f["best"] for f in files if f.get("best")]
    merged["best"] = min(bests, key=lambda b: b["val_loss"]) if bests else None
    merged["compute"] = added([f.get("compute") for f in files])
    merged["counts"]["pending"] = max(0, num_samples - sum(merged["counts"][s] for s in COUNTED if s != "pending"))
    return merged


def _remaining(status: dict) -> Optional[float]:
    """Seconds left at the rate trials finished in this run: the trials not yet finished over that rate."""
    finished, elapsed = int(status.get("finished_this_run") or 0), status.get("elapsed_s")
    left = max(0, status["num_samples"] - status["done"])
    if left == 0:
        return 0.0
    if not finished or not elapsed:
        return None
    return left * elapsed / finished


def live_status(home: Path) -> Optional[dict]:
    """`sweep ls`'s view of a sweep whose driver runs here: `read_status`, or None when it does not run (the
    tables tell the rest). Never raises: one unreadable sweep must not hide the others."""
    first = _read_json(home / STATUS_FILE)
    if first is None or first.get("state") != "running" or not lock_held(home):
        return None
    try:
        return read_status(str(home))
    except (ResultsError, SweepError, OSError, ValueError, KeyError, TypeError):
        return None


# ---- showing ----------------------------------------------------------------------------------

def format_status(status: dict) -> str:
    from .telemetry import status_line

    counts, name, state = status["counts"], status["name"], status["state"]
    driver = status.get("driver") or {}
    head = f"sweep {name}: {state}"
    if state in ("running", "stopping") and driver.get("pid"):
        head += f" (driver PID {driver['pid']} on {driver.get('host')})"
    if status.get("why") and state != "running":
        head += f": {status['why']}"
    done = ", ".join(f"{counts[s]} {'failed (error)' if s == 'error' else s}" for s in FINISHED)
    lines = [f"{head} | {status['home']}",
             f"trials: {status['done']}/{status['num_samples']} done ({done}); {counts['running']} running, "
             f"{counts['pending']} pending",
             f"epochs: {status.get('epochs', 0)}"]
    best = status.get("best")
    if best:
        params = ", ".join(f"{k}={short(v)}" for k, v in (best.get("params") or {}).items() if v is not None)
        lines.append(f"best val_loss: {best['val_loss']:.5f} (trial {best['trial_id']}: {params})")
    else:
        lines.append("best val_loss: - (no trial has reported yet)")
    if status.get("compute"):
        lines.append(status_line(status["compute"]))
    timing = []
    if status.get("elapsed_s") is not None:
        timing.append(f"elapsed {_duration(status['elapsed_s'])}"
                      + (" (this run)" if state not in ("running", "stopping") else ""))
    if state in ("running", "stopping"):
        remaining = status.get("remaining_s")
        timing.append(f"remaining ~{_duration(remaining)}" if remaining is not None
                      else "remaining: not known until a trial finishes")
    if status.get("updated"):
        updated = datetime.datetime.fromtimestamp(status["updated"], datetime.timezone.utc)
        timing.append(f"updated {updated:%Y-%m-%d %H:%M:%S} UTC")
    if status.get("source") == "tables":
        timing.append("from the tables (this sweep keeps no status.json)")
    lines.append(" | ".join(timing) if timing else "elapsed: not recorded")
    if state == "running":
        lines.append(f"`sweep stop {status['home']}` stops it cleanly; `sweep resume {status['home']}` then continues it")
    elif state == "stopping":
        lines.append(f"stopping: trials are checkpointed, then the tables written; `sweep resume {status['home']}` "
                     "then continues it")
    elif state == "stopped":
        lines.append(f"`sweep resume {status['home']}` continues it")
    else:
        lines.append(f"tables: {status['home']}/trials.parquet; `sweep analyze {status['home']}` shows them")
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else (f"{minutes}m {secs:02d}s" if minutes else f"{secs}s")


def counted(status: dict) -> str:
    """The counts in one phrase, as the driver's own last line has them."""
    counts = status["counts"]
    parts = [f"{counts[s]} {s}" for s in (Status.COMPLETED, Status.DIVERGED, Status.ERROR, Status.STOPPED) if counts[s]]
    return ", ".join(parts) or "no trials"


# ---- stopping ---------------------------------------------------------------------------------

def stop(name_or_dir: str, *, wait: bool = True, timeout_s: float = 300.0, storage_path: str = "results",
         poll_s: float = 0.5) -> tuple[bool, dict]:
    """Ask the sweep's running driver to stop cleanly (SIGTERM: trials checkpointed, tables written) and,
    with `wait`, wait up to `timeout_s` for it to end. Returns (ended, status). A sweep that is not running,
    or whose driver is on another machine, is refused with what to do instead."""
    status = read_status(name_or_dir, storage_path)
    name, home, state = status["name"], Path(status["home"]), status["state"]
    if state == "finished":
        raise SweepError(f"sweep {name} has finished ({counted(status)}); there is nothing to stop; "
                         f"`sweep status {name_or_dir}` shows it")
    if state == "stopped":
        raise SweepError(f"sweep {name} is stopped, not running ({counted(status)}); "
                         f"`sweep resume {name_or_dir}` continues it")
    if status["recorded"] != "running":  # the lock is held, but the file is still the last run's
        raise SweepError(f"sweep {name}'s driver holds {lock_path(home)} but has not written its status yet (it is "
                         f"starting, or an older aesweep runs it); try `sweep stop {name_or_dir}` again in a few "
                         "seconds, or press Ctrl-C in the driver's terminal")
    driver = status.get("driver") or {}
    pid, host = driver.get("pid"), driver.get("host")
    if not pid:
        raise SweepError(f"sweep {name} is running but its driver recorded no PID (an older aesweep); "
                         "press Ctrl-C in its terminal, or send it SIGTERM")
    if host and host != socket.gethostname():
        raise SweepError(f"sweep {name} runs on host {host} (driver PID {pid}), not on this one "
                         f"({socket.gethostname()}); run `sweep stop {name_or_dir}` on {host}, or "
                         f"`kill -TERM {pid}` there")
    if state == "stopping":
        raise SweepError(f"sweep {name} is already stopping (driver PID {pid}); `sweep status {name_or_dir}` "
                         f"follows it; `kill -TERM {pid}` stops it at once, without its checkpoints")
    if not _is_driver(int(pid), home):
        raise SweepError(f"PID {pid} in {home / STATUS_FILE} is not the driver of sweep {name} (it does not hold "
                         f"{lock_path(home)}); stop the driver with Ctrl-C in its terminal")
    (home / STOP_FILE).write_text(f"{pid}\n")
    try:
        os.kill(int(pid), signal.SIGTERM)
    except ProcessLookupError:
        pass  # it ended on its own just now: the wait below reports how
    if not wait:
        return False, read_status(name_or_dir, storage_path)
    deadline = time.monotonic() + timeout_s
    while _alive(int(pid)) and time.monotonic() < deadline:
        time.sleep(poll_s)
    # The lock is released only after the driver's last write: once it is free, status.json is final.
    while lock_held(home) and not _alive(int(pid)) and time.monotonic() < deadline:
        time.sleep(poll_s)
    return not _alive(int(pid)), read_status(name_or_dir, storage_path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    with contextlib.suppress(OSError):  # a zombie is dead to us (a test's own child that is not reaped yet)
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _is_driver(pid: int, home: Path) -> bool:
    """Whether `pid` is the process holding the sweep's lock: a PID recorded once may belong to another
    process now. On Linux its open files say so; elsewhere, the lock is held and the PID alive."""
    if not lock_held(home) or not _alive(pid):
        return False
    if not Path("/proc/self/fd").is_dir():  # no /proc here: the lock and the PID are all we can check
        return True
    target = str(lock_path(home).resolve())
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except PermissionError:  # another user's driver: its command line at least must be a sweep's
        try:
            return b"sweep" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):  # closed since it was listed
            if os.readlink(fd) == target:
                return True
    return False
