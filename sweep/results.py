"""Ray's experiment folder -> the sweep's tables (trials, epochs) and best config, written atomically.

The tables are derived data: `build_tables` rebuilds them from `ray/` at any time (Ray's experiment
state gives each trial's status and config, each trial's result.json its epochs), so a crash can
never leave a half table behind that is not rebuilt. Reads need no running Ray.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd
import yaml

from aemodels import ConfigError, TrainConfig
from aemodels.files import write_atomic
from aemodels.registry import knobs
from aemodels.status import FINISHED, RANKED, Status

from . import storage
from .errors import ResultsError, SweepError
from .experiment import EXPERIMENT_DIR, check_resumable, experiment_dirs, experiment_name, read_experiment, trial_folder_record
from .study import (LEGACY_STUDY_FILE, STUDY_FILE, finished_trials, snapshot_name, snapshot_study, storage_error,
                    study_path, study_url, trial_status)
from .spec import SEARCHED, FileProblem, SpecError, SweepSpec, load_yaml, parse, read_text, yaml_problem

COMPUTE_COLUMNS = ["cpu_s", "device_s", "wait_s"]  # README, "Compute telemetry", says what each one counts
EPOCH_COLUMNS = ["trial_id", "epoch", "train_loss", "val_loss", "epoch_s", "train_s", "images_per_s", "pack_size",
                 "status", "timestamp", *COMPUTE_COLUMNS, "trainer"]
TRIAL_COLUMNS = ["trial_id", *SEARCHED, "status", "epochs", "best_val_loss", "final_val_loss", "final_train_loss",
                 "wall_s", "node", "node_id", "device", "execution", "num_failures", "error", *COMPUTE_COLUMNS,
                 "queued_s"]
HYPER_DTYPES = {"latent_dim": "Int64", "lr": "Float64", **{k.name: "Float64" for k in knobs()}}
SPEC_FILE = "sweep.yaml"
TABLE_FILES = ("trials.parquet", "trials.csv", "epochs.parquet", "best_config.yaml")
CONFIDENCE = 0.95
SUMMARY_COLUMNS = ["rank", "trial_id", *SEARCHED, "seeds", "diverged", "mean_val_loss", "std_val_loss", "ci_low",
                   "ci_high", "search_val_loss", "confirmed_rank"]
CONFIRM_TABLES = ("confirm.parquet", "confirm.csv")  # `sweep confirm`: one row per configuration and seed
FINISHED_STATUSES = FINISHED


@dataclass
class Results:
    """What a sweep found: `trials` (one row each), `epochs` (one row per trial and epoch), the best config."""

    home: Path
    spec: SweepSpec
    trials: pd.DataFrame
    epochs: pd.DataFrame
    best_trial: Optional[str]
    best_config: Optional[TrainConfig]  # the search's best trial's; `confirmed_config()` is the confirm's pick
    confirm: Optional[pd.DataFrame] = None  # confirm.parquet (`sweep confirm`): one row per configuration and seed

    def confirmed(self) -> Optional[pd.DataFrame]:
        """`sweep confirm`'s summary, one row per configuration: mean, std and 95 % interval of its seeds' final
        val_loss beside the search's own value and rank; None when the sweep has not been confirmed."""
        return None if self.confirm is None else summarise(self.confirm)

    def confirmed_config(self) -> Optional[TrainConfig]:
        """The configuration with the best confirmed mean (what best_config.yaml names after a confirm), or None."""
        return None if self.confirm is None else confirmed_config(self)

    def best_row(self) -> Optional[pd.Series]:
        if self.best_trial is None:
            return None
        return self.trials.set_index("trial_id").loc[self.best_trial]

    def best_per_variant(self) -> pd.DataFrame:
        ranked = ranked_trials(self.trials)
        return ranked.groupby("variant", sort=True).head(1).reset_index(drop=True)

    def pareto(self, include_stopped: bool = False) -> pd.DataFrame:
        """Per variant, the trials no other trial of that variant beats on both final_val_loss and latent_dim
        (both minimised): the smallest bottleneck for each reconstruction. Sorted by variant, then latent_dim.

        Completed trials only, unless include_stopped (ASHA-stopped trials, whose loss is from an earlier
        epoch); diverged and errored trials and non-finite losses never. Trials with the same latent_dim and
        the same loss dominate neither other, so all of them are kept. The rows keep every trials column.
        """
        statuses = list(RANKED) if include_stopped else [Status.COMPLETED]
        table = self.trials.reset_index(drop=True)  # one label per row: the masks below align by it
        loss = pd.to_numeric(table["final_val_loss"], errors="coerce").astype(float)
        latent = pd.to_numeric(table["latent_dim"], errors="coerce").astype(float)
        usable = table["status"].isin(statuses) & (loss.abs() < math.inf) & latent.notna()  # NaN, inf fail <
        fronts = []
        for _, trials in table[usable].groupby("variant", sort=True):
            # A latent_dim is on the front when its lowest loss beats every smaller latent_dim's lowest
            # loss; its trials with that lowest loss are the front's rows (the others it dominates itself).
            mine = pd.DataFrame({"latent": latent[trials.index], "loss": loss[trials.index]})
            lowest = mine.groupby("latent")["loss"].min().sort_index()
            lowest_below = lowest.cummin().shift(1, fill_value=math.inf)
            on_front = lowest[lowest < lowest_below]
            fronts.append(trials[mine["loss"] == mine["latent"].map(on_front)])
        if not fronts:
            return table.iloc[:0]
        return pd.concat(fronts).sort_values(["variant", "latent_dim", "trial_id"], kind="stable") \
            .reset_index(drop=True)


# ---- locating a sweep ----------------------------------------------------------------------------

def local_home(spec: SweepSpec) -> Path:
    """The sweep's local folder: under storage_path, or results/<name> mirroring an object store."""
    base = Path("results") if storage.is_remote(spec.storage_path) else Path(spec.storage_path)
    return (base / spec.name).resolve()


def remote_home(spec: SweepSpec) -> Optional[str]:
    return storage.join(spec.storage_path, spec.name) if storage.is_remote(spec.storage_path) else None


def find_home(name_or_dir: str, storage_path: str = "results") -> Path:
    """A sweep's local folder from its name (under results/), its path, or its object-store URI."""
    if storage.is_remote(name_or_dir):
        home = (Path("results") / storage.basename(name_or_dir)).resolve()
        try:
            found = storage.download(storage.join(name_or_dir, SPEC_FILE), home / SPEC_FILE)
        except OSError as exc:
            raise ResultsError(f"cannot read {name_or_dir} ({str(exc).splitlines()[0]}); check the URI and "
                               "the credentials") from None
        if not found:
            raise ResultsError(f"no sweep at {name_or_dir}: it holds no {SPEC_FILE}")
        return home
    candidates = list(dict.fromkeys([Path(name_or_dir), Path(storage_path) / name_or_dir]))  # one if absolute
    for candidate in candidates:
        try:
            if (candidate / SPEC_FILE).is_file():
                return candidate.resolve()
        except OSError as exc:  # is_file raises on a folder it may not search
            raise ResultsError(f"{candidate}: cannot read it ({exc.strerror or exc}); check its permissions") from None
    missing = (f"neither {candidates[0]} nor {candidates[1]} holds a {SPEC_FILE}" if len(candidates) > 1
               else f"{candidates[0]} holds no {SPEC_FILE}")
    raise ResultsError(f"no sweep {name_or_dir!r}: {missing}; `sweep ls` lists the sweeps")


def sync_down(home: Path, spec: SweepSpec) -> None:
    """Refresh the local mirror of a remote experiment's small files (results, states, histories)."""
    remote = remote_home(spec)
    if remote:
        for driver in range(spec.all_drivers):
            storage.download_tree(storage.join(remote, experiment_name(driver)), home / experiment_name(driver))
    if not study_path(home).is_file():  # a driver on another machine wrote the study: take its newest copy
        for name in (STUDY_FILE, LEGACY_STUDY_FILE):
            stored = home / f".{name}.store"  # the store's copy (remote sweeps only), to compare
            try:
                copies = [home / EXPERIMENT_DIR / snapshot_name(study_url(home / name))]
                if remote and storage.download(storage.join(remote, name), stored):
                    copies.append(stored)
                found = [c for c in copies if c.is_file()]
                if found:
                    # Ray's copy, or the store's, which the searcher puts before each of Ray's uploads
                    # (StudySearch._put_mirror): Ray's can be the older one. A journal only grows.
                    newest = max(found, key=lambda c: c.stat().st_size) if name == STUDY_FILE else found[0]
                    shutil.copyfile(newest, home / name)
                    break
            finally:
                if stored.exists():
                    stored.unlink()


def sync_up(home: Path, spec: SweepSpec, names=(SPEC_FILE,)) -> None:
    """Copy the named files of the local folder, and the study once there is one, to the object store
    (one whole object each)."""
    remote = remote_home(spec)
    if remote:
        study_file = study_path(home)
        for name in names + (study_file.name,):
            if (home / name).is_file():
                try:
                    if name == study_file.name:  # a consistent copy, taken between the driver's writes
                        snapshot_study(study_url(study_file), str(home / EXPERIMENT_DIR / f".{name}.upload"))
                        storage.upload(home / EXPERIMENT_DIR / f".{name}.upload", storage.join(remote, name))
                        continue
                    storage.upload(home / name, storage.join(remote, name))
                except OSError as exc:
                    raise ResultsError(f"cannot copy {name} to {remote} ({str(exc).splitlines()[0]}); the local "
                                       f"copy in {home} is intact; `sweep analyze {home}` uploads it again") from None


def read_spec(home: Path) -> SweepSpec:
    path = home / SPEC_FILE
    fix = "`sweep run` wrote it: restore it from a copy, or run the sweep again with --overwrite"
    raw = read_yaml_file(path, fix)
    if not isinstance(raw, dict) or not isinstance(raw.get("sweep"), dict):
        raise ResultsError(f"{path}: holds no `sweep:` mapping; {fix}")
    try:
        return parse(raw["sweep"], source=str(path))
    except SpecError as exc:
        raise ResultsError(f"{exc}; {fix}") from None


def no_best_trial(found: "Results", name_or_dir: str) -> ResultsError:
    """The error for a sweep with no completed or stopped trial yet, with the one command that gets one:
    `sweep resume` where experiment.check_resumable lets it resume, else the sweep's own command again with
    --overwrite (a sweep killed before Ray's first snapshot has nothing to resume from)."""
    name = found.spec.name
    try:
        check_resumable(found.home)
    except SweepError:
        command = f"sweep run FILE --name {name}"
        with contextlib.suppress(ResultsError, AttributeError):
            command = (read_yaml_file(found.home / SPEC_FILE, "").get("meta") or {}).get("command") or command
        again = command if "--overwrite" in command.split() else f"{command} --overwrite"
        return ResultsError(f"sweep {name} has no completed or stopped trial, and `sweep resume` cannot continue it "
                            f"(Ray saved no state it can resume from); start it again: `{again}`")
    return ResultsError(f"sweep {name} has no completed or stopped trial yet; `sweep resume {name_or_dir}` "
                        "finishes it")


def read_yaml_file(path: Path, fix: str):
    """A small YAML file of the sweep's folder, or a one-line ResultsError naming it and `fix`."""
    try:
        return load_yaml(read_text(path))
    except FileProblem as exc:
        raise ResultsError(f"{path}: {exc}; {fix}") from None
    except yaml.YAMLError as exc:
        raise ResultsError(f"{path}: {yaml_problem(exc)}; {fix}") from None


def read_table(path: Path, fix: str, columns=("trial_id", "status", "epochs", "final_val_loss")) -> pd.DataFrame:
    """A Parquet table of the sweep's folder, or a one-line ResultsError naming it and `fix`."""
    import pyarrow

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the read forever
            raise FileProblem("is not a regular file")
        table = pd.read_parquet(path)
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such file; {fix}") from None
    except FileProblem as exc:
        raise ResultsError(f"{path}: {exc}; {fix}") from None
    except (OSError, ValueError, pyarrow.ArrowException) as exc:
        detail = (str(exc).splitlines() or [""])[0]
        raise ResultsError(f"{path}: not a readable Parquet table ({type(exc).__name__}: {detail[:80]}); "
                           f"{fix}") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ResultsError(f"{path}: has no {', '.join(missing)} column; {fix}")
    return table


# ---- tables ---------------------------------------------------------------------------------------

def _finished_in_study(home: Path, spec: SweepSpec) -> dict[str, tuple[str, float | None]]:
    """The study's record of finished trials: (status, when the searcher proposed it) per trial id; {}
    (Ray's word stands, the queue time is unknown) when there is none or it cannot be read.

    A study that cannot be read (a journal damaged by hand; an older sweep's SQLite study on a
    read-only mount, where SQLite cannot create its -shm file) leaves the tables worth rebuilding from
    Ray's files, so that is a note, not an error.
    """
    path = study_path(home)
    if not path.is_file():
        return {}
    try:
        return finished_trials(study_url(path), spec.name)
    except Exception as exc:  # SQLAlchemy's errors, a journal's ValueError / OSError, a missing study (KeyError)
        print(f"note: cannot read {path} ({storage_error(exc)}); trial statuses come from Ray's "
              "records alone")
        return {}


def build_tables(home: Path, spec: Optional[SweepSpec] = None) -> Results:
    spec = spec or read_spec(home)
    # The study records each trial's end as it happens; Ray's snapshot can lag (it may still say
    # RUNNING for a trial that has since ended, or miss a trial that started and ended between two
    # snapshots), so the study's word on how a trial ended wins.
    in_study = _finished_in_study(home, spec)
    told = {trial_id: status for trial_id, (status, _, _) in in_study.items()}
    experiments = experiment_dirs(home, spec)
    records = [record for experiment in experiments for record in read_experiment(experiment)]
    for record in records:
        if record["trial_id"] in told:
            record["study_status"] = told[record["trial_id"]]
        record["suggested_at"] = in_study[record["trial_id"]][1] if record["trial_id"] in in_study else None
    known = {record["trial_id"] for record in records}
    for trial_id, status in sorted(told.items()):
        if trial_id not in known and status != Status.ERROR:
            params = in_study[trial_id][2]
            orphan = next(filter(None, (trial_folder_record(e, trial_id, status, params) for e in experiments)), None)
            if orphan is not None:
                records.append(orphan)
    # One frame for every trial's rows: a frame per trial costs milliseconds, a minute at 5,000 trials.
    every = pd.DataFrame([{**row, "trial_id": record["trial_id"], "_trial": k}
                          for k, record in enumerate(records) for row in record["rows"] if "epoch" in row])
    if not every.empty:
        # A restored trial re-reports the epochs between its checkpoint and the crash: keep the last of each.
        every = every.drop_duplicates(["_trial", "epoch"], keep="last").sort_values(["_trial", "epoch"], kind="stable")
        every = every.reset_index(drop=True)
    by_trial = dict(iter(every.groupby("_trial", sort=False))) if not every.empty else {}
    trial_rows = [_trial_row(record, by_trial.get(k), spec) for k, record in enumerate(records)]
    trials = pd.DataFrame(trial_rows, columns=TRIAL_COLUMNS).astype(HYPER_DTYPES)
    epochs = every.reindex(columns=EPOCH_COLUMNS) if not every.empty else pd.DataFrame(columns=EPOCH_COLUMNS)
    best = ranked_trials(trials)
    best_id = None if best.empty else best.iloc[0]["trial_id"]
    best_config = None
    if best_id is not None:
        params = trials.set_index("trial_id").loc[best_id, list(SEARCHED)].to_dict()
        best_config = spec.train_config({k: plain(v) for k, v in params.items()})
    return Results(home, spec, trials, epochs, best_id, best_config, read_confirm(home))


def _trial_row(record: dict, epochs: Optional[pd.DataFrame], spec: SweepSpec) -> dict:
    last = record["last_result"]
    params = spec.trial_params(record["config"])
    if record.get("study_status"):
        status = record["study_status"]
    elif record["ray_status"] == "TERMINATED":
        status = trial_status(last, False, spec.epochs)
    elif record["ray_status"] == "ERROR":
        status = Status.ERROR
    else:
        status = record["ray_status"].lower()  # running / pending / paused: the sweep did not finish
    finite = epochs["val_loss"][epochs["val_loss"].map(lambda v: v is not None and math.isfinite(v))] \
        if epochs is not None else pd.Series(dtype=float)
    final = epochs.iloc[-1] if epochs is not None else {}
    return {
        "trial_id": record["trial_id"], **params, "status": status,
        "epochs": int(final["epoch"]) if epochs is not None else 0,
        "best_val_loss": float(finite.min()) if len(finite) else math.nan,
        "final_val_loss": float(final["val_loss"]) if epochs is not None else math.nan,
        "final_train_loss": float(final["train_loss"]) if epochs is not None else math.nan,
        "wall_s": float(last.get("time_total_s", math.nan)), "node": last.get("hostname"), "node_id": last.get("node_id"),
        "device": last.get("device"), "execution": last.get("execution"),
        "num_failures": int(record["num_failures"]), "error": record["error"] if status == Status.ERROR else None,
        **_compute(epochs, record.get("suggested_at")),
    }


def _compute(epochs: Optional[pd.DataFrame], suggested_at: Optional[float]) -> dict:
    """A trial's compute: its epochs' sums, and the wall time it waited in Tune's queue (from the searcher's
    proposal to its first start) added to its waits. NaN where its rows carry none (an older aesweep)."""
    def total(column):
        if epochs is None or column not in epochs:
            return math.nan
        return float(pd.to_numeric(epochs[column], errors="coerce").sum(min_count=1))

    queued = math.nan
    if epochs is not None and "started_at" in epochs and suggested_at is not None:
        started = pd.to_numeric(epochs["started_at"], errors="coerce").min()
        queued = max(0.0, float(started) - suggested_at) if math.isfinite(started) else math.nan
    waited = total("wait_s")
    return {"cpu_s": total("cpu_s"), "device_s": total("device_s"),
            "wait_s": waited + (queued if math.isfinite(queued) else 0.0), "queued_s": queued}


def ranked_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials that can be the best, best first: completed ones by final val_loss, then stopped ones."""
    usable = trials[trials["status"].isin(RANKED) & trials["final_val_loss"].notna()]
    order = usable.assign(_rank=(usable["status"] != Status.COMPLETED).astype(int))
    return order.sort_values(["_rank", "final_val_loss"]).drop(columns="_rank")


def plain(value):
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    return value.item() if hasattr(value, "item") else value


# ---- writing --------------------------------------------------------------------------------------

def finished_in_tables(home: Path) -> set[str]:
    """The ids of the trials the sweep's trials.parquet lists as finished (none if it has none)."""
    try:
        trials = pd.read_parquet(Path(home) / "trials.parquet", columns=["trial_id", "status"])
    except (OSError, ValueError, KeyError):  # no table yet; an unreadable one is rebuilt
        return set()
    return set(trials.loc[trials["status"].isin(FINISHED_STATUSES), "trial_id"])


def write_tables(results: Results) -> None:
    """trials.parquet/.csv, epochs.parquet and best_config.yaml, each replaced atomically; never by tables
    that lose a finished trial the current ones list."""
    home = results.home
    lost = finished_in_tables(home) - set(
        results.trials.loc[results.trials["status"].isin(FINISHED_STATUSES), "trial_id"])
    if lost:
        raise ResultsError(f"the tables rebuilt from {home} lack {len(lost)} finished trial(s) that "
                           f"{home / 'trials.parquet'} lists ({', '.join(sorted(lost)[:3])}); the tables are left as "
                           "they were; Ray's folder or the study is damaged or incomplete")
    write_file(home / "trials.parquet", lambda path: results.trials.to_parquet(path, index=False))
    write_file(home / "trials.csv", lambda path: results.trials.to_csv(path, index=False))
    write_file(home / "epochs.parquet", lambda path: results.epochs.to_parquet(path, index=False))
    confirmed = best_config_header(results) if results.confirm is not None else None
    if confirmed is not None:
        text = confirmed + yaml.safe_dump(results.confirmed_config().to_dict(), sort_keys=False)
        write_file(home / "best_config.yaml", lambda path: Path(path).write_text(text))
    elif results.best_config is not None:
        row = results.best_row()
        header = (f"# best trial {results.best_trial} of sweep {results.spec.name}: {row['status']}, "
                  f"val_loss {row['final_val_loss']:.6g} after {row['epochs']} epochs\n"
                  "# aemodels.TrainConfig(**yaml.safe_load(open(this file))) trains it again\n")
        text = header + yaml.safe_dump(results.best_config.to_dict(), sort_keys=False)
        write_file(home / "best_config.yaml", lambda path: Path(path).write_text(text))
    sync_up(home, results.spec, TABLE_FILES + (SPEC_FILE,))


def write_file(target: Path, write) -> None:
    try:
        write_atomic(target, write)
    except OSError as exc:
        raise ResultsError(f"cannot write {target} ({exc.strerror or exc}); the previous file is intact; "
                           f"free space or fix permissions, then `sweep analyze {target.parent.name}` "
                           "rebuilds it") from None


# ---- `sweep confirm`'s table ----------------------------------------------------------------------------------

def interval(values, confidence: float = CONFIDENCE) -> tuple[float, float, float, float]:
    """(mean, sample standard deviation, low, high): Student's t interval of the mean; NaN bounds below 2 values."""
    from scipy import stats

    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: seeds completed, seeds diverged, mean / standard deviation / 95 % interval of the
    final val_loss over its completed seeds, the search's own val_loss and rank, and the rank by mean
    (a configuration with a diverged seed ranks after every one without)."""
    rows = []
    for (rank, trial_id), runs in table.groupby(["rank", "trial_id"], sort=True):
        completed = runs[runs["status"] == Status.COMPLETED]["final_val_loss"]
        completed = completed[completed.map(lambda v: math.isfinite(v))]
        mean, std, low, high = interval(completed)
        first = runs.iloc[0]
        rows.append({"rank": int(rank), "trial_id": trial_id, **{k: first[k] for k in SEARCHED},
                     "seeds": int(len(completed)), "diverged": int((runs["status"] == Status.DIVERGED).sum()),
                     "mean_val_loss": mean, "std_val_loss": std, "ci_low": low, "ci_high": high,
                     "search_val_loss": float(first["search_val_loss"])})
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS[:-1])
    order = summary.assign(_bad=(summary["diverged"] > 0) | summary["mean_val_loss"].isna()) \
        .sort_values(["_bad", "mean_val_loss", "rank"]).index
    summary.loc[order, "confirmed_rank"] = range(1, len(summary) + 1)
    return summary.astype({"confirmed_rank": int}).astype(HYPER_DTYPES)


def confirmed_best(summary: pd.DataFrame) -> Optional[pd.Series]:
    """The configuration with the best mean, if any configuration has a completed seed and none diverged."""
    if summary is None or summary.empty:
        return None
    row = summary.sort_values("confirmed_rank").iloc[0]
    if row["diverged"] > 0 or not math.isfinite(row["mean_val_loss"]):
        return None
    return row


def best_config_header(found: "Results") -> Optional[str]:
    """best_config.yaml's comment lines when a confirm has picked the configuration, else None."""
    summary = found.confirmed()
    best = confirmed_best(summary)
    if best is None:
        return None
    searched = summary[summary["rank"] == 1]
    lines = [f"# confirmed best of sweep {found.spec.name}: trial {best['trial_id']} (the search's rank "
             f"{int(best['rank'])}), mean final val_loss {best['mean_val_loss']:.6g} over {int(best['seeds'])} seeds, "
             f"95% CI [{best['ci_low']:.6g}, {best['ci_high']:.6g}] (`sweep confirm`, confirm.parquet)"]
    if not searched.empty:
        s = searched.iloc[0]
        lines.append(f"# the search's own best: trial {s['trial_id']}, val_loss {s['search_val_loss']:.6g} in one "
                     f"run; confirmed mean {s['mean_val_loss']:.6g}, 95% CI [{s['ci_low']:.6g}, {s['ci_high']:.6g}]")
    lines.append("# aemodels.TrainConfig(**yaml.safe_load(open(this file))) trains it again")
    return "\n".join(lines) + "\n"


def confirmed_config(found: "Results"):
    """The TrainConfig of the configuration with the best confirmed mean (the sweep's seed), or None."""
    best = confirmed_best(found.confirmed())
    if best is None:
        return None
    runs = found.confirm[found.confirm["trial_id"] == best["trial_id"]]
    params = {k: plain(best[k]) for k in SEARCHED}
    config = found.spec.train_config(params)
    return config.replace(epochs=int(runs["epochs"].max()))


def read_confirm(home: Path) -> Optional[pd.DataFrame]:
    """confirm.parquet, or None when the sweep has not been confirmed."""
    path = Path(home) / CONFIRM_TABLES[0]
    if not path.is_file():
        return None
    return read_table(path, f"`sweep confirm {Path(home).name}` rebuilds it",
                                  columns=("rank", "trial_id", "seed", "status", "final_val_loss"))


def load_results(name_or_dir: str, *, rebuild: bool = False, storage_path: str = "results") -> Results:
    """The sweep's tables as DataFrames (rebuilt from Ray's folder when asked, or when missing)."""
    home = find_home(name_or_dir, storage_path)
    spec = read_spec(home)
    if rebuild or not (home / "trials.parquet").is_file():
        sync_down(home, spec)
        results = build_tables(home, spec)
        if rebuild:
            write_tables(results)
        else:
            with contextlib.suppress(ResultsError):  # a read-only copy of a sweep is still readable
                write_tables(results)
        return results
    fix = f"`sweep analyze {name_or_dir}` rebuilds it"
    trials = read_table(home / "trials.parquet", fix)
    epochs = read_table(home / "epochs.parquet", fix, columns=("trial_id", "epoch", "val_loss"))
    best_config, best_trial = None, None
    if (home / "best_config.yaml").exists():
        path = home / "best_config.yaml"
        try:
            best_config = TrainConfig.from_dict(read_yaml_file(path, fix))
        except ConfigError as exc:
            raise ResultsError(f"{path}: not a TrainConfig ({exc}); {fix}") from None
        ranked = ranked_trials(trials)
        best_trial = None if ranked.empty else ranked.iloc[0]["trial_id"]
    confirm = read_confirm(home)
    if confirm is not None and best_trial is not None:  # best_config.yaml names the confirmed best
        params = trials.set_index("trial_id").loc[best_trial, list(SEARCHED)].to_dict()
        best_config = spec.train_config({k: plain(v) for k, v in params.items()})
    return Results(home, spec, trials, epochs, best_trial, best_config, confirm)
