"""Ray Tune's experiment folders of a sweep (ray/, and ray-<k>/ of its other drivers and extensions):
where they are, the trials Ray recorded in them with their result rows, checkpoint histories and
errors, and whether Ray can resume one. It reads what Ray writes and writes nothing there.

No Ray at import: the tables (sweep.results) are built from these records. Ray's own reader,
ExperimentAnalysis, would import Ray into every notebook that reads a sweep, build a DataFrame of
every trial's results besides, and its trials name their error file only inside a running Ray
(Trial.error_file asks for the Ray session's folder), so the tables of a failed sweep would need one.
The one private format read here is experiment_state-*.json, for each trial's id, config, status,
failures and error file; the floor job reads it with the oldest Ray declared, CI with the newest. A
layout this module does not know, as a later Ray may write, is read through ExperimentAnalysis instead
(public_entries): a Ray upgrade that changes it slows the tables down instead of failing them.

Ray copies its state files into the experiment folder in place; the sweep has it write them through
sweep.storage.WholeFiles, so that a driver killed mid-copy leaves the file before, whole. A folder that
has a cut-short one anyway (copied by other means, a full disk) is refused for a resume in one line
(check_resumable), and the tables read its newest complete state and the trials it lacks from their
own folders.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import pickletools
from pathlib import Path
from typing import Iterable, NamedTuple, Optional

from aemodels.status import Status

from . import storage
from .epochs import HISTORY_FILE, epoch_rows
from .errors import ResultsError, SweepError
from .spec import SweepSpec
from .storage import RAY_STATE

EXPERIMENT_DIR = "ray"


def experiment_name(driver: int = 0) -> str:
    """The folder of a driver's Ray experiment in the sweep's folder: ray/ (the first), ray-1/, ray-2/, ..."""
    return EXPERIMENT_DIR if driver == 0 else f"{EXPERIMENT_DIR}-{driver}"


def experiment_dirs(home: Path, spec: SweepSpec) -> list[Path]:
    """Every driver's Ray experiment folder, those of the sweep's extensions (`sweep extend`) included."""
    return [home / experiment_name(k) for k in range(spec.all_drivers)]


def experiment_path(home: Path, remote: Optional[str], driver: int = 0) -> str:
    """Where Ray keeps a driver's experiment: in the sweep's object-store folder `remote` when there is
    one, else in its local folder `home`."""
    name = experiment_name(driver)
    return storage.join(remote, name) if remote else str(home / name)


def state_files(folder: Path) -> list[Path]:
    """Ray's state files in an experiment folder: every top-level .json and .pkl, as its restore copies them."""
    return sorted(p for p in folder.glob("*") if p.suffix in (".json", ".pkl") and p.is_file())



def state_kind(name: str) -> str:
    """The pattern of a state file of Ray's (RAY_STATE), of which Ray restores the newest; any other file is
    a kind of its own."""
    return next((pattern for pattern in RAY_STATE if fnmatch.fnmatch(name, pattern)), name)


def complete(data: bytes, name: str) -> bool:
    """Whether a state file was written to its end: JSON parses; a pickle's opcodes run to its STOP (read
    without unpickling, so without importing the classes it names)."""
    try:
        if name.endswith(".json") and not data.startswith(b"\x80"):  # search_gen_state-*.json is a pickle
            json.loads(data)
        else:
            for _ in pickletools.genops(data):
                pass
        return bool(data)
    except (ValueError, UnicodeDecodeError):
        return False


def state_kinds(experiment: Path) -> dict[str, list[Path]]:
    """Ray's state files by kind (state_kind), oldest first."""
    kinds: dict[str, list[Path]] = {}
    for path in state_files(experiment):
        kinds.setdefault(state_kind(path.name), []).append(path)
    return kinds


def restorable(files: list[Path]) -> Optional[Path]:
    """Of one kind's files (oldest first), the newest that is complete: Ray restores it when no newer one
    was cut short. None: every one was."""
    return next((path for path in reversed(files) if path.is_file() and complete(path.read_bytes(), path.name)), None)


def read_state(experiment: Path) -> tuple[Optional[dict], Optional[Path], bool]:
    """Ray's newest complete experiment state, the file it was read from, and whether a newer one was cut
    short (then Ray's snapshot misses what happened after it). (None, None, True) when none is complete;
    (None, None, False) when Ray wrote none."""
    written = sorted(experiment.glob("experiment_state-*.json"))
    for path in reversed(written):
        with contextlib.suppress(OSError, ValueError):
            return json.loads(path.read_bytes()), path, path != written[-1]
    return None, None, bool(written)


def read_experiment(experiment: Path) -> list[dict]:
    """One record per trial Ray knows: id, config, Ray status, last result, failures, error, result rows, and
    whether Ray's snapshot holds a result for it (`snapshot_result`). Where Ray's newest state was cut short,
    the trials its older one lacks are read from their folders (`snapshot_result` None)."""
    state, state_file, fallback = read_state(experiment)
    if state is None and not fallback:
        return []
    if fallback:
        print(f"note: {experiment}: Ray's newest experiment state was cut short by a crash; its trials are read "
              f"from {'an older snapshot and ' if state is not None else ''}their own folders", flush=True)
    try:
        entries = snapshot_entries(state) if state is not None else []
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        entries = public_entries(state_file, exc)
    records = []
    for entry in entries:
        folder = experiment / entry.folder
        results = result_rows(folder)
        # result.json is written with each result, the snapshot every few seconds: its last row is newer.
        records.append({
            "trial_id": entry.trial_id, "config": entry.config, "ray_status": entry.status,
            "last_result": results[-1] if results else entry.last_result,
            "num_failures": entry.num_failures,
            "error": error_line(folder, entry.error_file), "rows": trial_rows(folder, results),
            "snapshot_result": reported(entry.last_result),
        })
    if fallback:
        known = {record["trial_id"] for record in records}
        records.extend(r for r in (folder_record(p.parent) for p in sorted(experiment.glob("*/params.json")))
                       if r is not None and r["trial_id"] not in known)
    return records


class Entry(NamedTuple):
    """What Ray's snapshot holds of a trial: its id, config, Ray status, folder (its name in the experiment
    folder), last result, failures and error file's name (None: error.txt if there is one)."""
    trial_id: str
    config: dict
    status: str
    folder: str
    last_result: dict
    num_failures: int
    error_file: Optional[str]


def snapshot_entries(state: dict) -> list[Entry]:
    """The trials of Ray's experiment state, read as the Ray versions this project is tested with write it
    (a JSON document per trial and one of its runtime data). KeyError, TypeError, ValueError or
    AttributeError: a layout they do not write."""
    entries = []
    for trial, runtime in state["trial_data"]:
        trial, runtime = json.loads(trial), json.loads(runtime)
        last = runtime.get("last_result") or {}
        if not isinstance(last, dict):
            raise TypeError("last_result is not a mapping")
        entries.append(Entry(trial["trial_id"], trial["config"], trial["status"], trial["relative_logdir"], last,
                             int(runtime.get("num_failures", 0)), runtime.get("error_filename")))
    return entries


def public_entries(state_file: Path, why: Exception) -> list[Entry]:
    """The trials of a state file whose layout snapshot_entries does not know (a newer Ray may write
    another), read through Ray's public reader instead: slower (it reads every trial's results too), and it
    imports Ray, which only this case needs. A file that reader cannot read either is a one-line error."""
    try:
        from ray.tune import ExperimentAnalysis

        trials = ExperimentAnalysis(str(state_file)).trials
        return [Entry(t.trial_id, t.config, t.status, Path(t.path).name, t.last_result or {}, t.num_failures, None)
                for t in trials]
    except Exception:  # whatever Ray raises on a file it cannot parse: the error names the file either way
        raise ResultsError(f"{state_file}: Ray's experiment state cannot be read ({type(why).__name__}); restore it "
                           "from a copy (the trials' own folders beside it are intact)") from None


def reported(result: dict) -> bool:
    """Whether a trial's last result in Ray's state is one the trial reported. Before the first report,
    Tune's state may hold the trial's auto-filled keys alone (its id, host, pid, date, config), which end a
    restarted trial without the metric its scheduler needs; each reported result counts training_iteration."""
    return "training_iteration" in result


def restart_ends(records: list[dict], finished: Iterable[str]) -> dict[str, Optional[dict]]:
    """The trials that ended (`finished`, ids) for sweep.trial.ended_before: id -> None, or, where the state
    Ray restores (`records`, read_experiment's) lists the trial unfinished and without a result (it predates
    the trial's first), the trial's last epoch from its own folder, for Tune to end it with."""
    ends: dict[str, Optional[dict]] = dict.fromkeys(finished)
    for record in records:
        if record["trial_id"] in ends and record["ray_status"] not in ("TERMINATED", "ERROR") and \
                record["snapshot_result"] is False:
            ends[record["trial_id"]] = record["rows"][-1] if record["rows"] else None
    return ends


def folder_record(folder: Path, trial_id: Optional[str] = None, config: Optional[dict] = None) -> Optional[dict]:
    """A trial read from its own folder alone (params.json, result.json, error.txt, its checkpoints), as Ray
    wrote them. Its id, unless given, is in its results; its config is params.json's, else `config` for a
    trial with rows. None for a trial these do not identify."""
    results = result_rows(folder)
    rows = trial_rows(folder, results)
    try:
        config = json.loads((folder / "params.json").read_text())
    except (OSError, ValueError):
        if config is None or not rows:
            return None
    trial_id = trial_id or (results[0].get("trial_id") if results else None)
    if trial_id is None:
        return None
    error = error_line(folder, None)
    last = results[-1] if results else rows[-1] if rows else {}
    return {"trial_id": trial_id, "config": config,
            "ray_status": "ERROR" if error else "TERMINATED" if last.get("done") else "RUNNING",
            "last_result": last, "num_failures": 0, "error": error, "rows": rows, "snapshot_result": None}


def trial_folders(home: Path, trial_id: str) -> list[Path]:
    """The trial's folder in whichever driver's experiment ran it (ray/, or ray-<k>/)."""
    return sorted(home.glob(f"{EXPERIMENT_DIR}*/*_{trial_id}_*"))


def checkpoints(*folders: Path) -> list[Path]:
    """The checkpoints Ray kept in trial folders, newest first (Ray numbers them with leading zeros)."""
    return sorted((c for f in folders for c in f.glob("checkpoint_*")), key=lambda c: c.name, reverse=True)


def trial_rows(folder: Path, results: Optional[list[dict]] = None) -> list[dict]:
    """The trial's rows: its newest readable checkpoint's history, then what result.json (`results`, if
    read already) has beyond it."""
    history = []
    for checkpoint in checkpoints(folder):
        with contextlib.suppress(OSError, ValueError):
            history = json.loads((checkpoint / HISTORY_FILE).read_text())
            break
    last = max((r["epoch"] for r in history), default=0)
    results = result_rows(folder) if results is None else results
    return history + [r for r in results if r.get("epoch", 0) > last]


def result_rows(folder: Path) -> list[dict]:
    rows = []
    with contextlib.suppress(FileNotFoundError):
        with open(folder / "result.json") as fh:
            for line in fh:
                with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a crash
                    rows.extend(epoch_rows(json.loads(line)))
    return rows


def error_line(folder: Path, filename: Optional[str]) -> Optional[str]:
    filename = filename or ("error.txt" if (folder / "error.txt").is_file() else None)
    if not filename:
        return None
    with contextlib.suppress(OSError):
        lines = [line.strip() for line in (folder / filename).read_text().splitlines() if line.strip()]
        return lines[-1][:300] if lines else "error"
    return "error"


def trial_folder_record(experiment: Path, trial_id: str, status: str, params: dict) -> Optional[dict]:
    """A trial the study saw finish (with `params`) but Ray's last snapshot never listed (it started and
    ended between two snapshots, and the driver died before the next): read from its own folder.

    Ray writes a trial's params.json and result.json in the driver's staging folder and copies them into
    the trial's folder with its snapshots, while the trial writes its checkpoints there itself: a driver
    killed in between leaves only the checkpoints, whose history holds the trial's rows."""
    folders = [f for f in experiment.glob(f"*_{trial_id}_*") if f.is_dir()]
    record = folder_record(folders[0], trial_id, params) if folders else None
    if record is not None:
        record.update(ray_status="TERMINATED", study_status=status,
                      error=record["error"] if status == Status.ERROR else None)
    return record


def can_continue(experiment: Path) -> bool:
    """Whether Ray began this experiment (its folder is one Tuner.restore can continue), by Ray's own check:
    then a run continues it instead of starting a new one."""
    from ray.tune import Tuner

    return Tuner.can_restore(str(experiment))


def check_resumable(home: Path, driver: int = 0) -> None:
    """Fail loudly on a sweep (a driver's experiment) Ray could not resume, or only with a fresh searcher
    (ray#30861).

    Ray restores the newest of each kind of its state files and fails on one cut short; it silently skips
    a missing searcher state and goes on with a fresh one. Its files are pickles (the .json of
    search_gen_state too): each must unpickle to its mapping.
    """
    import ray.cloudpickle as cloudpickle  # Ray pickled them

    from .searcher import STATE_FORMAT

    experiment = home / experiment_name(driver)
    kinds = state_kinds(experiment)
    for kind in RAY_STATE:
        files = kinds.get(kind, [])
        found = restorable(files)
        if files and found is None:
            raise SweepError(f"{files[-1]} is cut short and no complete one is left, so Ray cannot resume the sweep; "
                             "rerun it with --overwrite")
        if files and found != files[-1]:
            raise SweepError(f"{files[-1]} is cut short, so Ray cannot resume from it; move it out of {experiment} "
                             f"so that Ray resumes from {found.name}, or rerun the sweep with --overwrite")
        if found is None and kind == "tuner.pkl":
            raise SweepError(f"{experiment} has no tuner.pkl: the sweep never started; run it again with --overwrite")
        if found is None:
            raise SweepError(f"{experiment} has no {kind}: Ray would resume with a fresh searcher and lose the "
                             "study's state; run the sweep again with --overwrite")
        if kind == "tuner.pkl":
            continue
        try:
            with open(found, "rb") as fh:
                state = json.load(fh) if kind == "experiment_state-*.json" else cloudpickle.load(fh)
            if not isinstance(state, dict):
                raise ValueError("not a mapping")
        except Exception as exc:
            raise SweepError(f"{found} is corrupt ({type(exc).__name__}); resuming would fall back to a default "
                             "searcher, so it is refused; restore that file or rerun with --overwrite") from None
        if kind == "searcher-state-*.pkl" and state.get("format") != STATE_FORMAT:
            raise SweepError(f"{found} was made by an older aesweep (its OptunaSearch-based searcher); finish the "
                             "sweep with that version or rerun with --overwrite")
