"""`sweep confirm`: train a finished sweep's top K configurations again with S seeds each, and say which
configuration is best on average, with a 95 % interval, instead of by one lucky run (the winner's curse).

It owns the sweep's confirm/ folder (one Tune experiment of fixed configurations per invocation that had
runs left to do: no searcher, no early stopping, the sweep's own trainable, plan and failure handling),
confirm.parquet / confirm.csv (one row per configuration and seed) and their per-configuration summary.
It does not own the sweep's trials tables or the study, which it only reads.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pickle
from pathlib import Path
from typing import Optional

import pandas as pd

from aemodels.status import Status

from . import results as results_mod
from . import storage
from .errors import Interrupted, SweepError
from .experiment import (error_line, read_experiment, restart_ends, restorable, result_rows, state_kinds,
                         trial_rows)
from .results import (CONFIRM_TABLES, HYPER_DTYPES, Results, confirmed_best, load_results, plain, ranked_trials,
                      write_file)
from .spec import SEARCHED

CONFIRM_DIR = "confirm"  # in the sweep's folder: run-0/, run-1/, ... (Tune experiments), and nothing else
REQUEST_FILE = "request.json"  # in each run's folder: the configurations that run was asked to train
DONE_ENV = "AESWEEP_CONFIRM_DONE"  # a file of run keys a restored FixedConfigs must not hand out again
DEFAULT_TOP, DEFAULT_SEEDS = 5, 5
ROW_COLUMNS = ["rank", "trial_id", *SEARCHED, "seed", "status", "epochs", "final_val_loss", "best_val_loss",
               "wall_s", "search_val_loss", "execution", "device", "run"]


# ---- what to train --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Request:
    """The top `top` configurations of a sweep, each with `seeds` seeds, for `epochs` epochs."""

    top: Optional[int] = None  # None: DEFAULT_TOP, or every completed trial when the sweep has fewer
    seeds: int = DEFAULT_SEEDS
    epochs: Optional[int] = None  # None: the sweep's full epochs
    execution: Optional[str] = None  # trial | packed; None: as the sweep's plan decides (packed where it packs)


def check_request(request: Request) -> None:
    for name in ("top", "seeds"):
        value = getattr(request, name)
        if name == "top" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SweepError(f"confirm {name} must be a whole number >= 1, got {value!r}")
    if request.epochs is not None and (isinstance(request.epochs, bool) or not isinstance(request.epochs, int)
                                       or request.epochs < 1):
        raise SweepError(f"confirm epochs must be a whole number >= 1, got {request.epochs!r}")
    if request.execution not in (None, "auto", "trial", "packed"):
        raise SweepError(f"confirm execution must be auto, trial or packed, got {request.execution!r}")


def candidates(found: Results, top: Optional[int]) -> pd.DataFrame:
    """The search's top `top` completed trials (None: DEFAULT_TOP or as many as there are), best first, with
    their rank (1: the search's best).

    Completed trials only: a trial ASHA stopped has a val_loss from an earlier epoch, not comparable."""
    ranked = ranked_trials(found.trials)
    ranked = ranked[ranked["status"] == Status.COMPLETED].reset_index(drop=True)
    if top is None:
        top = max(1, min(DEFAULT_TOP, len(ranked)))
    if top > len(ranked):
        raise SweepError(f"--top {top} but sweep {found.spec.name} has {len(ranked)} completed trial(s) to confirm; "
                         f"use --top {max(1, len(ranked))} or fewer" if len(ranked) else
                         f"sweep {found.spec.name} has no completed trial to confirm")
    return ranked.head(top).assign(rank=range(1, top + 1))


def seeds_for(spec, count: int) -> list[int]:
    """The sweep's own seed, then the next integers: the first reproduces the sweep's trial exactly, and each
    seed keys every random stream of its run (initial weights, subset, batch order, noise; aemodels.pack)."""
    first = int(spec.train.get("seed", 0))
    return [first + i for i in range(count)]


def run_config(row, seed: int, epochs: int) -> dict:
    """What one confirm run hands the trainable: the trial's searched values, the seed and the epochs."""
    values = {k: plain(row[k]) for k in SEARCHED}
    return {**{k: v for k, v in values.items() if v is not None}, "seed": int(seed), "epochs": int(epochs)}


def run_key(config: dict) -> str:
    """One run's identity: its configuration, seed and epochs."""
    return json.dumps({k: config[k] for k in sorted(config)}, sort_keys=True)


# ---- the Tune searcher of fixed configurations ----------------------------------------------------

def _searcher_class():
    from ray.tune.search import Searcher

    class FixedConfigs(Searcher):
        """Hands Tune the given configurations in order, one per trial, then says it is finished.

        A restored one skips the runs that DONE_ENV's file lists: Ray's snapshot of this searcher can lag
        the trials, and a run that finished after it must not train again."""

        def __init__(self, configs: list[dict]):
            super().__init__(metric="val_loss", mode="min")
            self.configs, self.given = list(configs), 0
            self.live: set[str] = set()
            self.max_concurrent = 0

        def set_max_concurrency(self, max_concurrent: int) -> bool:
            # Its own limit, not Tune's ConcurrencyLimiter: that one restores the trials it last saw running
            # and, for those that ended after Ray's snapshot, never hears of their end, so it hands out nothing.
            self.max_concurrent = max_concurrent
            return True

        def suggest(self, trial_id: str):
            if self.max_concurrent and len(self.live) >= self.max_concurrent:
                return None
            done = _done_keys()
            while self.given < len(self.configs):
                config = self.configs[self.given]
                self.given += 1
                if run_key(config) not in done:
                    self.live.add(trial_id)
                    return dict(config)
            return Searcher.FINISHED

        def on_trial_complete(self, trial_id, result=None, error=False):
            self.live.discard(trial_id)

        def save(self, checkpoint_path: str):
            with open(checkpoint_path, "wb") as fh:
                pickle.dump({"configs": self.configs, "given": self.given, "max_concurrent": self.max_concurrent}, fh)

        def restore(self, checkpoint_path: str):
            with open(checkpoint_path, "rb") as fh:
                state = pickle.load(fh)
            self.configs, self.given = state["configs"], state["given"]
            self.max_concurrent = state.get("max_concurrent", 0)
            # Restored trials still running report their end again; the others have ended already.
            self.live = set()

    return FixedConfigs


def _done_keys() -> set[str]:
    path = os.environ.get(DONE_ENV)
    if not path:
        return set()
    with contextlib.suppress(OSError, ValueError):
        return set(json.loads(Path(path).read_text()))
    return set()


# ---- reading the runs -----------------------------------------------------------------------------

def confirm_home(home: Path) -> Path:
    return Path(home) / CONFIRM_DIR


def run_dirs(home: Path) -> list[Path]:
    folder = confirm_home(home)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("run-*") if p.is_dir() and p.name[4:].isdigit()), key=lambda p: int(p.name[4:]))


def read_runs(home: Path, epochs: int) -> list[dict]:
    """Every confirm run's record, from the trials' own folders (not Ray's snapshot, which can lag them):
    key, config, status (completed, diverged, error, or unfinished), its rows' last epoch and losses."""
    records = []
    for experiment in run_dirs(home):
        for params in experiment.glob("*/params.json"):
            folder = params.parent
            try:
                config = json.loads(params.read_text())
            except (OSError, ValueError):
                continue
            rows = [r for r in trial_rows(folder) if "epoch" in r]
            rows = list({r["epoch"]: r for r in rows}.values())  # a restored trial re-reports epochs: keep the last
            rows.sort(key=lambda r: r["epoch"])
            last = rows[-1] if rows else None
            error = error_line(folder, None)
            reported = result_rows(folder)  # Tune's own rows: the trial's time_total_s
            status = run_end(last, config.get("epochs", epochs)) or ("error" if error else "unfinished")
            losses = [r["val_loss"] for r in rows if r.get("val_loss") is not None and math.isfinite(r["val_loss"])]
            records.append({
                "key": run_key(config), "config": config, "status": status, "run": experiment.name,
                "epochs": last["epoch"] if last else 0,
                "final_val_loss": float(last["val_loss"]) if last and last.get("val_loss") is not None else math.nan,
                "best_val_loss": min(losses) if losses else math.nan,
                "wall_s": float(reported[-1].get("time_total_s", math.nan)) if reported else math.nan,
                "execution": (last or {}).get("execution"), "device": (last or {}).get("device"),
                "mtime": params.stat().st_mtime,
            })
    return records


def finished_runs(records: list[dict]) -> dict[str, dict]:
    """The newest finished (completed or diverged) record of each run key."""
    done: dict[str, dict] = {}
    for record in sorted(records, key=lambda r: r["mtime"]):
        if record["status"] in (Status.COMPLETED, Status.DIVERGED):
            done[record["key"]] = record
    return done


def build_table(chosen: pd.DataFrame, seeds: list[int], epochs: int, records: list[dict]) -> pd.DataFrame:
    """One row per chosen configuration and seed, in rank then seed order; a run not finished is `missing`."""
    done = finished_runs(records)
    latest = {r["key"]: r for r in sorted(records, key=lambda r: r["mtime"])}
    rows = []
    for _, trial in chosen.iterrows():
        for seed in seeds:
            key = run_key(run_config(trial, seed, epochs))
            record = done.get(key) or latest.get(key) or {"status": "missing", "epochs": 0}
            rows.append({"rank": int(trial["rank"]), "trial_id": trial["trial_id"],
                         **{k: plain(trial[k]) for k in SEARCHED}, "seed": seed,
                         "status": record["status"], "epochs": int(record.get("epochs") or 0),
                         "final_val_loss": record.get("final_val_loss", math.nan),
                         "best_val_loss": record.get("best_val_loss", math.nan),
                         "wall_s": record.get("wall_s", math.nan),
                         "search_val_loss": float(trial["final_val_loss"]), "execution": record.get("execution"),
                         "device": record.get("device"), "run": record.get("run")})
    return pd.DataFrame(rows, columns=ROW_COLUMNS).astype(HYPER_DTYPES)


# ---- running --------------------------------------------------------------------------------------

def confirm(name_or_dir: str, request: Request = Request(), *, address: Optional[str] = None,
            quiet: bool = False) -> Results:
    """Train the request's (configuration, seed) runs that have not finished yet, then write the tables."""
    from .runner import claim, check_writable, ray_for_sweep
    from .status import read_status

    check_request(request)
    found = load_results(name_or_dir)
    home, spec = found.home, found.spec
    state = read_status(str(home))
    if state["state"] != "finished":
        fix = f"`sweep resume {home.name}` finishes it" if state["state"] == "stopped" else "wait for it to end"
        raise SweepError(f"sweep {spec.name} is {state['state']} ({state['done']}/{state['num_samples']} trials "
                         f"done); confirm needs a finished sweep: {fix}")
    epochs = request.epochs or spec.epochs
    chosen = candidates(found, request.top)
    seeds = seeds_for(spec, request.seeds)
    request = dataclasses.replace(request, top=len(chosen))
    wanted = [run_config(row, seed, epochs) for _, row in chosen.iterrows() for seed in seeds]
    check_writable(home)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    with claim(home, "wait for the other `sweep` command on it to end"):
        _sync_down(home, spec)
        received: list = []
        records = read_runs(home, epochs)
        left = [c for c in wanted if run_key(c) not in finished_runs(records)]
        say(f"confirm sweep {spec.name}: top {request.top} configurations x {request.seeds} seeds "
            f"({', '.join(map(str, seeds))}), {epochs} epochs: {len(wanted) - len(left)} of {len(wanted)} runs "
            f"done, {len(left)} to train in {confirm_home(home)}")
        unfinished = _unfinished_run(home, records)
        if left or unfinished is not None:
            with ray_for_sweep(address or spec.address, spec) as received:
                if unfinished is not None and not received:
                    _fit(spec, home, unfinished, None, records, None)
                    records = read_runs(home, epochs)
                    left = [c for c in wanted if run_key(c) not in finished_runs(records)]
                if left and not received:
                    run = confirm_home(home) / f"run-{len(run_dirs(home))}"
                    _fit(spec, home, run, left, records, request.execution)
        return _finish(found, chosen, seeds, epochs, received, say)


def _unfinished_run(home: Path, records: list[dict]) -> Optional[Path]:
    """The newest confirm run whose request has runs left and that Ray can restore, if any: Ray restores the
    newest of each kind of its state files, and cannot one cut short (then the runs left train anew)."""
    runs = run_dirs(home)
    if not runs or not all(any(runs[-1].glob(state)) for state in ("tuner.pkl", "experiment_state-*.json")):
        return None
    if any(restorable(files) != files[-1] for files in state_kinds(runs[-1]).values()):
        return None
    try:
        asked = json.loads((runs[-1] / REQUEST_FILE).read_text())["configs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    done = finished_runs(records)
    return runs[-1] if any(run_key(c) not in done for c in asked) else None


def _fit(spec, home: Path, run: Path, configs: Optional[list[dict]], records: list[dict],
         execution: Optional[str]) -> None:
    """Train `configs` as a new Tune experiment at `run` (`execution`: None, as the sweep), or (None) restore
    the unfinished one there, with the execution it started with."""
    from ray import tune

    from .progress import RESUMED_TRIALS_ENV, Progress
    from .runner import _sweep_services, idle_workers_for_trials, plan, trainable

    from aemodels import load_dataset

    if configs is None:
        request = json.loads((run / REQUEST_FILE).read_text())
        asked, execution = request["configs"], request["execution"]
    else:
        asked = configs
    epochs = max(c["epochs"] for c in asked)
    # The sweep's spec with this run's size and epochs: the plan, the trainable and its reporting follow it.
    cspec = dataclasses.replace(spec, num_samples=len(asked), train={**spec.train, "epochs": epochs})
    if execution:
        cspec = dataclasses.replace(cspec, resources=dataclasses.replace(spec.resources, execution=execution))
    run_plan = plan(cspec)
    how = (f"{run_plan.trainers} trainer(s), up to {run_plan.pack_size} runs each" if run_plan.execution == "packed"
           else f"{run_plan.max_concurrent} at a time")
    print(f"{'resuming ' if configs is None else ''}{run}: {len(asked)} runs, {run_plan.execution} execution ({how})",
          flush=True)
    dataset = None if spec.simulate is not None else load_dataset(spec.dataset, spec.data_dir)
    remote = results_mod.remote_home(spec)
    storage_path = storage.join(remote, CONFIRM_DIR) if remote else str(confirm_home(home))
    done_file = confirm_home(home) / ".done.json"
    done = sorted(finished_runs(records))
    confirm_home(home).mkdir(exist_ok=True)
    write_file(done_file, lambda path: Path(path).write_text(json.dumps(done)))
    saved = {k: os.environ.get(k) for k in (DONE_ENV, RESUMED_TRIALS_ENV)}
    os.environ[DONE_ENV] = str(done_file)
    try:
        with _sweep_services(cspec, run_plan, confirm_home(home), dataset), idle_workers_for_trials():
            if configs is None:
                restored = read_experiment(run)
                os.environ[RESUMED_TRIALS_ENV] = str(len(restored))
                finished = restart_ends(restored, _finished_in_run(restored, epochs))
                tuner = tune.Tuner.restore(str(run) if not remote else storage.join(storage_path, run.name),
                                           trainable=trainable(cspec, run_plan, dataset, finished),
                                           resume_unfinished=True, resume_errored=False,
                                           storage_filesystem=storage.ray_filesystem(remote))
            else:
                os.environ[RESUMED_TRIALS_ENV] = "0"
                run.mkdir(parents=True, exist_ok=True)
                text = json.dumps({"configs": configs, "execution": run_plan.execution})
                write_file(run / REQUEST_FILE, lambda path: Path(path).write_text(text))
                tuner = tune.Tuner(
                    trainable(cspec, run_plan, dataset),
                    tune_config=tune.TuneConfig(search_alg=_searcher_class()(configs), num_samples=len(configs),
                                                max_concurrent_trials=max(1, run_plan.max_concurrent),
                                                reuse_actors=True),
                    run_config=tune.RunConfig(
                        name=run.name, storage_path=storage_path, verbose=0,
                        storage_filesystem=storage.ray_filesystem(remote),
                        callbacks=[Progress(len(configs), epochs)],
                        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                        checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
            tuner.fit()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _finished_in_run(restored: list[dict], epochs: int) -> dict[str, str]:
    """Tune trial id -> how it ended, for the trials of a run (`restored`: its read_experiment records) whose
    own rows show their end."""
    ended = {}
    for record in restored:
        rows = [r for r in record["rows"] if "epoch" in r]
        end = run_end(rows[-1] if rows else None, record["config"].get("epochs", epochs))
        if end:
            ended[record["trial_id"]] = end
    return ended


def run_end(last: Optional[dict], epochs: int) -> Optional[Status]:
    """How a run ended, from its last epoch row: diverged, completed (all its epochs), or None (not yet)."""
    if last is None:
        return None
    if last.get("status") == Status.DIVERGED:
        return Status.DIVERGED
    return Status.COMPLETED if last["epoch"] >= epochs else None


def _sync_down(home: Path, spec) -> None:
    remote = results_mod.remote_home(spec)
    if remote:
        storage.download_tree(storage.join(remote, CONFIRM_DIR), confirm_home(home))


def _finish(found: Results, chosen: pd.DataFrame, seeds: list[int], epochs: int, received: list, say) -> Results:
    """Write confirm.parquet / .csv and best_config.yaml; say what the confirm found; after a signal, how to go on."""
    from .runner import signal_name

    home = found.home
    table = build_table(chosen, seeds, epochs, read_runs(home, epochs))
    write_file(home / CONFIRM_TABLES[0], lambda path: table.to_parquet(path, index=False))
    write_file(home / CONFIRM_TABLES[1], lambda path: table.to_csv(path, index=False))
    found = dataclasses.replace(found, confirm=table)
    results_mod.write_tables(found)
    results_mod.sync_up(home, found.spec, CONFIRM_TABLES)
    missing = table[~table["status"].isin([Status.COMPLETED, Status.DIVERGED])]
    if received:
        raise Interrupted(received[0], f"stopped by {signal_name(received)}: {len(table) - len(missing)} of "
                                       f"{len(table)} runs done; tables written; `sweep confirm {home.name}` with the "
                                       "same arguments continues it")
    say(describe(found))
    if len(missing):
        raise SweepError(f"{len(missing)} of {len(table)} confirm runs did not finish ({', '.join(sorted(set(missing['status'])))}); "
                         f"tables written; `sweep confirm {home.name}` with the same arguments retries them")
    return found


def describe(found: Results) -> str:
    """The per-configuration summary as text, and which configuration the confirm picks."""
    summary = found.confirmed()
    lines = [f"{'rank':>4} {'trial_id':12} {'variant':9} {'latent':>6} {'lr':>9} {'seeds':>5} {'mean':>9} "
             f"{'std':>9} {'95% CI':>21} {'search':>9} {'by mean':>7}"]
    for r in summary.sort_values("rank").itertuples():
        ci = f"[{r.ci_low:.5f}, {r.ci_high:.5f}]" if math.isfinite(r.ci_low) else "-"
        lines.append(f"{r.rank:>4} {r.trial_id:12} {r.variant:9} {r.latent_dim:>6} {r.lr:>9.3g} {r.seeds:>5} "
                     f"{r.mean_val_loss:>9.5f} {r.std_val_loss:>9.5f} {ci:>21} {r.search_val_loss:>9.5f} "
                     f"{r.confirmed_rank:>7}" + (f"  ({r.diverged} diverged)" if r.diverged else ""))
    best = confirmed_best(summary)
    if best is not None:
        lines.append(f"confirmed best: trial {best['trial_id']} (search rank {int(best['rank'])}), mean val_loss "
                     f"{best['mean_val_loss']:.5f}, 95% CI [{best['ci_low']:.5f}, {best['ci_high']:.5f}]; the search's "
                     f"own best: trial {found.best_trial}")
    lines.append(f"tables: {found.home}/confirm.parquet, confirm.csv; best_config.yaml names the confirmed best")
    return "\n".join(lines)
