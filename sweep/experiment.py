"""Ray Tune's experiment folders of a sweep (ray/, and ray-<k>/ of its other drivers and extensions):
where they are, the trials Ray recorded in them with their result rows, checkpoint histories and
errors, and whether Ray can resume one. It reads what Ray writes and writes nothing there.

No Ray at import: the tables (sweep.results) are built from these records. Ray's own reader,
ExperimentAnalysis, would import Ray into every notebook that reads a sweep, build a DataFrame of
every trial's results besides, and its trials name their error file only inside a running Ray
(Trial.error_file asks for the Ray session's folder), so the tables of a failed sweep would need one.
The one private format read here is experiment_state-*.json, for each trial's id, config, status,
failures and error file; the floor job reads it with the oldest Ray declared, CI with the newest.
"""
from __future__ import annotations

import contextlib
import glob
import json
from pathlib import Path
from typing import Optional

from aemodels.status import Status

from . import storage
from .epochs import HISTORY_FILE, epoch_rows
from .errors import ResultsError, SweepError
from .spec import SweepSpec

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


def newest(pattern: str) -> Optional[str]:
    found = sorted(glob.glob(pattern))
    return found[-1] if found else None


def read_experiment(experiment: Path) -> list[dict]:
    """One record per trial Ray knows: id, config, Ray status, last result, failures, error, result rows."""
    state_file = newest(str(experiment / "experiment_state-*.json"))
    if state_file is None:
        return []
    try:
        with open(state_file) as fh:
            entries = [(json.loads(t), json.loads(r)) for t, r in json.load(fh)["trial_data"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ResultsError(f"{state_file}: Ray's experiment state cannot be read ({type(exc).__name__}); restore it "
                           "from a copy (the trials' own folders beside it are intact)") from None
    records = []
    for trial, runtime in entries:
        folder = experiment / trial["relative_logdir"]
        results = result_rows(folder)
        # result.json is written with each result, the snapshot every few seconds: its last row is newer.
        records.append({
            "trial_id": trial["trial_id"], "config": trial["config"], "ray_status": trial["status"],
            "last_result": results[-1] if results else runtime.get("last_result") or {},
            "num_failures": runtime.get("num_failures", 0),
            "error": error_line(folder, runtime.get("error_filename")), "rows": trial_rows(folder, results),
        })
    return records


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


def trial_folder_record(experiment: Path, trial_id: str, status: str) -> Optional[dict]:
    """A trial the study saw finish but Ray's last snapshot never listed (it started and ended between
    two snapshots, and the driver died before the next): read from its own folder, as Ray wrote it."""
    folders = [f for f in experiment.glob(f"*_{trial_id}_*") if f.is_dir()]
    if not folders:
        return None
    folder = folders[0]
    try:
        config = json.loads((folder / "params.json").read_text())
    except (OSError, ValueError):
        return None
    results = result_rows(folder)
    return {"trial_id": trial_id, "config": config, "ray_status": "TERMINATED",
            "last_result": results[-1] if results else {}, "num_failures": 0,
            "error": error_line(folder, None) if status == Status.ERROR else None, "rows": trial_rows(folder, results),
            "study_status": status}


def check_resumable(home: Path, driver: int = 0) -> None:
    """Fail loudly on a sweep (a driver's experiment) Ray could only resume with a fresh searcher (ray#30861).

    Ray itself silently skips a missing searcher state and goes on with a fresh one, and its files
    are pickles (the .json of search_gen_state too): each must unpickle to its mapping.
    """
    import ray.cloudpickle as cloudpickle  # Ray pickled them

    from .searcher import STATE_FORMAT

    experiment = home / experiment_name(driver)
    if not (experiment / "tuner.pkl").is_file():
        raise SweepError(f"{experiment} has no tuner.pkl: the sweep never started; run it again with --overwrite")
    for pattern in ("searcher-state-*.pkl", "search_gen_state-*.json", "experiment_state-*.json"):
        found = newest(str(experiment / pattern))
        if found is None:
            raise SweepError(f"{experiment} has no {pattern}: Ray would resume with a fresh searcher and lose the "
                             "study's state; run the sweep again with --overwrite")
        try:
            with open(found, "rb") as fh:
                state = cloudpickle.load(fh) if "state" in pattern and "experiment" not in pattern else json.load(fh)
            if not isinstance(state, dict):
                raise ValueError("not a mapping")
        except Exception as exc:
            raise SweepError(f"{found} is corrupt or truncated ({type(exc).__name__}); resuming would fall back to a "
                             "default searcher, so it is refused; restore that file or rerun with --overwrite") from None
        if pattern.startswith("searcher-state") and state.get("format") != STATE_FORMAT:
            raise SweepError(f"{found} was made by an older aesweep (its OptunaSearch-based searcher); finish the "
                             "sweep with that version or rerun with --overwrite")
