"""Does the search work? Best val_loss reached against trial-epochs spent, four searchers on replayed curves (issue 21).

    python benchmarks/search_quality.py               # 10 seeds x 4 searchers x 2 spaces, 60 trials each (~20 min on 2 cores)
    python benchmarks/search_quality.py --quick       # 1 seed, 5 trials of 4 epochs: a smoke run (the test runs this)

The problem is fixed: configs/mnist.yaml's space (four variants, noise_factor only for denoising,
sparsity_weight only for sparse) and the same space with the variant fixed to vanilla, trained by
sweep.simulate's replay of learning curves recorded from real runs (`simulate: {seconds_per_epoch: 0}`),
through the sweep's own trainable (sweep.runner.trainable, sweep.trial.run_trial) on one local Ray.
The searchers, each with the sweep's searcher settings (n_startup_trials, multivariate, constant liar):
  (a) StudySearch (sweep.searcher: sweep.tpe's TPE, stopped trials PRUNED, ranked by epoch reached) + ASHA
  (b) Ray's OptunaSearch with Optuna's TPESampler (a stopped trial is told COMPLETE with its last value) + ASHA
  (c) random: OptunaSearch with Optuna's RandomSampler + ASHA
  (d) StudySearch without early stopping (FIFO: every trial runs all epochs)
ASHA is the sweep's (grace period, reduction factor, max_t = epochs). Every run has the same number of
trials; its anytime curve is the best val_loss any trial has reported so far (any epoch) against the
trial-epochs spent so far, in the order Tune received the results.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "benchmarks" / "out"
METHODS = {"study": "(a) StudySearch + ASHA", "optuna": "(b) OptunaSearch (TPESampler) + ASHA",
           "random": "(c) random (RandomSampler) + ASHA", "fifo": "(d) StudySearch, no early stopping"}
SPACES = {"four variants": None, "vanilla only": "vanilla"}  # the variant a space fixes (None: mnist.yaml's choice)
WITHIN = 0.02  # "reached": within 2 % of the best value any method found in that space


# ---- the problem ----------------------------------------------------------------------------------

def sweep_spec(variant: str | None, trials: int, epochs: int, concurrent: int, storage: str,
               startup: int | None = None):
    """configs/mnist.yaml, simulated, `trials` trials of at most `epochs` epochs, `concurrent` at once
    (and `startup` random trials before TPE, if given)."""
    from sweep.spec import parse, read_yaml

    raw = read_yaml(REPO / "configs" / "mnist.yaml")
    raw.update(name="quality", num_samples=trials, storage_path=storage, simulate={"seconds_per_epoch": 0},
               max_concurrent_trials=concurrent)
    raw["train"] = {**raw["train"], "epochs": epochs}
    if startup is not None:
        raw["searcher"] = {**raw["searcher"], "n_startup_trials": startup}
    raw["resources"] = {**raw["resources"], "execution": "trial", "gpu": 0, "cpu": 2 / concurrent}
    if variant is not None:
        from sweep.spec import CONDITIONAL

        # a scalar is a fixed value; the spec refuses a parameter only another variant uses
        raw["space"] = {**{k: v for k, v in raw["space"].items() if CONDITIONAL.get(k, variant) == variant},
                        "variant": variant}
    return parse(raw, source="search_quality")


def anytime():
    """A Tune callback that records the best val_loss reported so far against the trial-epochs spent so far,
    and per trial the epochs it reached and its config (a function: Ray is imported only once it is wanted)."""
    from ray.tune import Callback

    from sweep.epochs import epoch_rows

    class Anytime(Callback):
        def __init__(self):
            self.spent, self.best, self.points = 0, math.inf, []
            self.reached: dict[str, int] = {}
            self.last: dict[str, float] = {}  # the value at the epoch reached
            self.configs: dict[str, dict] = {}
            self.ended: list[str] = []  # in the order the trials ended, as the searcher learnt of them

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.configs.setdefault(trial.trial_id, dict(trial.config))
            for row in epoch_rows(result):  # a result at a rung carries the epochs since the trial's last one
                epoch, before = int(row.get("epoch", 0)), self.reached.get(trial.trial_id, 0)
                if epoch <= before:
                    continue
                self.spent += epoch - before
                self.reached[trial.trial_id] = epoch
                value = row.get("val_loss")
                if value is not None and math.isfinite(value):
                    self.best = min(self.best, float(value))
                    self.last[trial.trial_id] = float(value)
                self.points.append((self.spent, self.best))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.ended.append(trial.trial_id)

    return Anytime()


def searcher(method: str, spec, seed: int, folder: Path):
    """The Tune searcher of `method`, seeded; the sweep's searcher settings but for the seed."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from sweep.searcher import StudySearch, make_sampler
    from sweep.space import SearchSpace

    settings = dataclasses.replace(spec.searcher, seed=seed)
    if method in ("study", "fifo"):
        return StudySearch(SearchSpace(spec.space), settings, str(folder / "study.journal"), spec.name, spec.epochs,
                           num_samples=spec.num_samples)
    # SearchSpace is a define-by-run function returning the fixed values, the form OptunaSearch takes.
    sampler = make_sampler(settings, seed) if method == "optuna" else optuna.samplers.RandomSampler(seed=seed)
    return OptunaSearch(space=SearchSpace(spec.space), metric="val_loss", mode="min", sampler=sampler)


def run_one(method: str, spec, plan, seed: int, storage: Path) -> dict:
    """One Tune run of `method`; returns its anytime curve and each trial's epochs reached and config."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from sweep import runner

    folder = Path(tempfile.mkdtemp(prefix=f"{method}-{seed}-", dir=storage))
    if method == "fifo":
        scheduler = FIFOScheduler()
    else:
        scheduler = ASHAScheduler(time_attr="epoch", metric="val_loss", mode="min", max_t=spec.epochs,
                                  grace_period=spec.scheduler.grace_period,
                                  reduction_factor=spec.scheduler.reduction_factor, brackets=spec.scheduler.brackets)
    record = anytime()
    tuner = tune.Tuner(
        runner.trainable(spec, plan, None),
        tune_config=tune.TuneConfig(search_alg=searcher(method, spec, seed, folder), scheduler=scheduler,
                                    num_samples=spec.num_samples, max_concurrent_trials=plan.max_concurrent,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name="ray", storage_path=str(folder), verbose=0, callbacks=[record],
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
    tick = time.perf_counter()
    with runner.idle_workers_for_trials():
        tuner.fit()
    wall = time.perf_counter() - tick
    shutil.rmtree(folder, ignore_errors=True)
    return {"points": record.points, "reached": list(record.reached.values()), "wall_s": wall,
            "last": [record.last.get(t, math.inf) for t in record.reached],
            "ended": [list(record.reached).index(t) for t in record.ended if t in record.reached],
            "configs": [record.configs[t] for t in record.reached if t in record.configs]}


# ---- summaries ----------------------------------------------------------------------------------

def best_at(points: list[tuple[int, float]], spent: float) -> float:
    """The run's best value once `spent` trial-epochs were spent (inf before its first report)."""
    best = math.inf
    for x, value in points:
        if x > spent:
            break
        best = value
    return best


def first_within(points: list[tuple[int, float]], target: float) -> float:
    """Trial-epochs the run spent until its best was at or below `target` (inf: never)."""
    return next((float(x) for x, value in points if value <= target), math.inf)


def quartiles(values) -> tuple[float, float, float]:
    """(25th, 50th, 75th) percentile; inf where that share of runs never got there."""
    values = np.sort(np.asarray(values, dtype=float))
    return tuple(float(np.percentile(values, q, method="lower" if np.isinf(values).any() else "linear"))
                 for q in (25, 50, 75))


def summarise(runs: dict, rungs: tuple[int, ...], startup: int) -> dict:
    """runs[space][method] = [run per seed] -> table rows, the target per space and the common budget;
    `rungs`: the epochs whose trial counts are tabled (ASHA's rungs and the last epoch)."""
    table = {}
    for space, by_method in runs.items():
        best = min(r["points"][-1][1] for rs in by_method.values() for r in rs if r["points"])
        target = best * (1 + WITHIN)
        common = min(r["points"][-1][0] for rs in by_method.values() for r in rs)  # every run spent this much
        for method, rs in by_method.items():
            spent = [r["points"][-1][0] for r in rs]
            reach = [first_within(r["points"], target) for r in rs]
            table[space, method] = {
                "target": target, "common": common, "seeds": len(rs),
                "trials": int(np.median([len(r["reached"]) for r in rs])),
                "spent": quartiles(spent), "reach": quartiles(reach),
                "not_reached": sum(math.isinf(x) for x in reach),
                "at_common": quartiles([best_at(r["points"], common) for r in rs]),
                "final": quartiles([r["points"][-1][1] for r in rs]),
                "wall_s": float(np.sum([r["wall_s"] for r in rs])),
                "rungs": rung_counts(rs, rungs),
                "groups": good_groups(rs, max(rungs), startup) if all("ended" in r for r in rs) else {},
            }
    return table


def rung_counts(rs: list[dict], rungs: tuple[int, ...]) -> dict[int, float]:
    """Median over seeds of how many trials reached each epoch (ASHA's rungs and the last epoch)."""
    return {r: float(np.median([sum(e >= r for e in run["reached"]) for run in rs])) for r in rungs}


def proposals(rs: list[dict], spec, startup: int) -> dict:
    """How good the configs a searcher proposed after its start-up trials are, whatever ASHA did with them:
    the val_loss each would reach trained to the last epoch (its replayed curve, noise included); median
    over trials and seeds, and the share of proposals per variant."""
    from sweep.simulate import Curve

    finals, variants = [], {}
    for run in rs:
        for config in run["configs"][startup:]:
            settings = {**spec.train, **config}
            finals.append(Curve(settings).val_loss(spec.epochs))
            variants[settings.get("variant")] = variants.get(settings.get("variant"), 0) + 1
    total = max(1, sum(variants.values()))
    return {"n": len(finals), "median_final": float(np.median(finals)) if finals else math.nan,
            "q25": float(np.percentile(finals, 25)) if finals else math.nan,
            "variants": {v: n / total for v, n in sorted(variants.items())}}


def good_groups(rs: list[dict], epochs: int, startup: int) -> dict:
    """How the two TPEs would split the finished trials into the good group (Optuna's gamma: the best 10 %,
    at most 25) at each suggestion past the start-up trials: StudySearch ranks by (epoch reached, value
    there), a stopped trial below every complete one; OptunaSearch tells a stopped trial COMPLETE with its
    last value and ranks by value alone. For every prefix of a run's trials in the order they ended (from
    `startup` on), the share of each good group that ASHA stopped early and the share the two have in
    common; averaged over the prefixes, median over seeds."""
    from sweep.tpe import n_good

    stopped = {"study": [], "optuna": []}
    shared = []
    for run in rs:
        ended = [(run["reached"][i], run["last"][i]) for i in run["ended"]]
        parts = {"study": [], "optuna": [], "shared": []}
        for k in range(max(startup, 1), len(ended) + 1):
            trials, good = ended[:k], n_good(k)
            by_epoch = sorted(range(k), key=lambda i: (-trials[i][0], trials[i][1]))[:good]
            by_value = sorted(range(k), key=lambda i: trials[i][1])[:good]
            for name, group in (("study", by_epoch), ("optuna", by_value)):
                parts[name].append(sum(trials[i][0] < epochs for i in group) / good)
            parts["shared"].append(len(set(by_epoch) & set(by_value)) / good)
        if parts["shared"]:
            stopped["study"].append(np.mean(parts["study"]))
            stopped["optuna"].append(np.mean(parts["optuna"]))
            shared.append(np.mean(parts["shared"]))
    if not shared:
        return {}
    return {"stopped_study": float(np.median(stopped["study"])), "stopped_optuna": float(np.median(stopped["optuna"])),
            "shared": float(np.median(shared))}


# ---- output -------------------------------------------------------------------------------------

def _range(q: tuple[float, float, float], fmt: str) -> str:
    low, mid, high = (("not reached" if math.isinf(v) else fmt.format(v)) for v in q)
    return f"{mid} [{low}, {high}]"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def render(table: dict, extra: dict, settings: dict, command: str, wall: float) -> str:
    rungs = tuple(next(iter(table.values()))["rungs"])
    import optuna
    import ray

    spaces = list(dict.fromkeys(s for s, _ in table))
    lines = [f"# Search quality on replayed learning curves ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)",
             "", f"- command: `{command}`",
             f"- machine: {cpu_model()}, {os.cpu_count()} cores, no GPU; "
             f"Python {platform.python_version()}, Ray {ray.__version__}, Optuna {optuna.__version__}; "
             f"{wall / 60:.1f} min in all",
             f"- budget: {settings['trials']} trials per run ({settings['concurrent']} at once), at most {settings['epochs']} epochs each; "
             f"{settings['seeds']} searcher seeds (0-{settings['seeds'] - 1}) per searcher and space; ASHA grace 1, reduction "
             f"factor 3; n_startup_trials {settings['startup']}, multivariate, constant liar (configs/mnist.yaml's searcher)",
             f"- val_loss: the replayed curve's value a trial reported (sweep.simulate); \"reached\": the run's best "
             f"within {WITHIN:.0%} of the best value any run found in that space; median [25th, 75th percentile] over seeds",
             "", "| space | searcher | trials | trial-epochs spent | trial-epochs to within 2 % of best | not reached "
                 "| best at the common budget | final best |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (space, method), row in table.items():
        lines.append(f"| {space} | {METHODS[method]} | {row['trials']} | {_range(row['spent'], '{:,.0f}')} | "
                     f"{_range(row['reach'], '{:,.0f}')} | {row['not_reached']} of {row['seeds']} | "
                     f"{_range(row['at_common'], '{:.5f}')} | {_range(row['final'], '{:.5f}')} |")
    lines += ["", "Per space, the best value any run found, the 2 % target, and the common budget (every run spent "
                  "at least this many trial-epochs):", ""]
    for space in spaces:
        row = next(r for (s, _), r in table.items() if s == space)
        lines.append(f"- {space}: best {row['target'] / (1 + WITHIN):.5f}, target {row['target']:.5f}, "
                     f"common budget {row['common']:,} trial-epochs")
    lines += ["", "Trials reaching each epoch (median over seeds), and the configs proposed after the "
                  f"{settings['startup']} start-up trials: the val_loss each would reach trained to epoch {settings['epochs']} "
                  "(median [25th percentile] over proposals) and the share per variant:", "",
              "| space | searcher | " + " | ".join(f"reached {r}" for r in rungs) +
              " | proposals after start-up | their final val_loss | variants | Tune wall s (all seeds) |",
              "| --- | --- |" + " ---: |" * len(rungs) + " ---: | ---: | --- | ---: |"]
    for (space, method), row in table.items():
        p = extra[space, method]
        shares = ", ".join(f"{v} {s:.0%}" for v, s in p["variants"].items())
        lines.append(f"| {space} | {METHODS[method]} | " + " | ".join(f"{v:g}" for v in row["rungs"].values()) +
                     f" | {p['n']} | {p['median_final']:.5f} [{p['q25']:.5f}] | {shares} | {row['wall_s']:.0f} |")
    lines += ["", "The good group TPE learns from, formed from a run's trials in the order they ended, at every "
                  "point past the start-up trials (ASHA runs; mean over those points, median over seeds): the share "
                  "of it that ASHA stopped early under StudySearch's ranking (epoch reached, then value) and under "
                  "OptunaSearch's (a stopped trial told COMPLETE with its last value: value alone), and the share the "
                  "two groups have in common:", "",
              "| space | searcher | stopped, StudySearch's ranking | stopped, OptunaSearch's ranking | in both |",
              "| --- | --- | ---: | ---: | ---: |"]
    for (space, method), row in table.items():
        if method != "fifo" and row["groups"]:
            g = row["groups"]
            lines.append(f"| {space} | {METHODS[method]} | {g['stopped_study']:.0%} | {g['stopped_optuna']:.0%} | "
                         f"{g['shared']:.0%} |")
    return "\n".join(lines) + "\n"


def plot(runs: dict, table: dict, path: Path) -> None:
    """Anytime curves: per space a panel, per searcher the median best over seeds with the IQR shaded."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6 * len(runs), 4.5))
    FigureCanvasAgg(fig)
    for i, (space, by_method) in enumerate(runs.items()):
        ax = fig.add_subplot(1, len(runs), i + 1)
        for method, rs in by_method.items():
            end = min(r["points"][-1][0] for r in rs)  # the median of runs that have all not ended
            grid = np.unique(np.geomspace(1, end, 200).round())
            values = np.array([[best_at(r["points"], x) for x in grid] for r in rs])
            values[np.isinf(values)] = np.nan
            have = np.sum(~np.isnan(values), axis=0) == len(rs)
            if not have.any():
                continue
            q25, q50, q75 = np.nanpercentile(values[:, have], [25, 50, 75], axis=0)
            line, = ax.plot(grid[have], q50, label=METHODS[method])
            ax.fill_between(grid[have], q25, q75, color=line.get_color(), alpha=0.2)
        target = next(r["target"] for (s, _), r in table.items() if s == space)
        ax.axhline(target, color="grey", linestyle=":", linewidth=1, label="within 2 % of the best found")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("trial-epochs spent")
        ax.set_ylabel("best val_loss so far")
        ax.set_title(f"{space} ({len(next(iter(by_method.values())))} seeds; median, IQR)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# ---- main -----------------------------------------------------------------------------------------

def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="searcher seeds per searcher and space")
    parser.add_argument("--trials", type=int, default=60, help="trials per run")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of a trial ASHA never stops (max_t)")
    parser.add_argument("--concurrent", type=int, default=4, help="trials at once")
    parser.add_argument("--startup", type=int, default=None,
                        help="n_startup_trials of every searcher (default: configs/mnist.yaml's)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"a subset of {','.join(METHODS)}")
    parser.add_argument("--spaces", default=",".join(SPACES), help=f"a subset of {','.join(SPACES)}")
    parser.add_argument("--quick", action="store_true", help="1 seed, 5 trials of 4 epochs: a smoke run")
    parser.add_argument("--tables-only", action="store_true",
                        help="no runs: the table and plot again from the runs the last measurement saved (.json)")
    parser.add_argument("--out", type=Path, default=OUT / "search_quality.md", help="the table; the plot beside it (.png)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.trials, args.epochs, args.startup = 1, 5, 4, 3  # past start-up: TPE is exercised too
    methods = [m for m in args.methods.split(",") if m]
    spaces = [s for s in args.spaces.split(",") if s]
    for chosen, known, what in ((methods, METHODS, "method"), (spaces, SPACES, "space")):
        unknown = [c for c in chosen if c not in known]
        if unknown:
            parser.error(f"unknown {what} {unknown[0]!r} (known: {', '.join(known)})")
    saved = args.out.with_suffix(".json")
    if args.tables_only:
        data = json.loads(saved.read_text())
        return write(data["runs"], data["args"], data["command"], data["wall_s"], args.out)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: 127.0.0.1 only
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import logging

    import optuna
    import ray

    from sweep import runner

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("ray").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")  # Optuna's experimental-feature warnings, once per sampler
    command = "python benchmarks/search_quality.py" + "".join(f" {a}" for a in argv)
    storage = Path(tempfile.mkdtemp(prefix="aesweep-quality-"))
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False,
             _system_config={"preload_python_modules": list(runner.TRIAL_CODE), "enable_worker_prestart": True})
    tick = time.perf_counter()
    specs = {space: sweep_spec(SPACES[space], args.trials, args.epochs, args.concurrent, str(storage), args.startup)
             for space in spaces}
    settings = {"trials": args.trials, "epochs": args.epochs, "concurrent": args.concurrent, "seeds": args.seeds,
                "startup": specs[spaces[0]].searcher.n_startup_trials}
    runs = {space: {m: [] for m in methods} for space in spaces}
    try:
        plan = runner.plan(specs[spaces[0]])
        for seed in range(args.seeds):  # seeds outermost: a measurement cut short has every space and searcher
            for space in spaces:
                for method in methods:
                    run = run_one(method, specs[space], plan, seed, storage)
                    runs[space][method].append(run)
                    print(f"{space}, {method}, seed {seed}: {len(run['reached'])} trials, {run['points'][-1][0]} "
                          f"trial-epochs, best {run['points'][-1][1]:.5f} ({run['wall_s']:.1f} s)", flush=True)
            # what has been measured so far survives an interrupted measurement (--tables-only renders it)
            atomic_write(saved, json.dumps({"runs": runs, "args": {**settings, "seeds": seed + 1}, "command": command,
                                            "wall_s": time.perf_counter() - tick}))
    finally:
        ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)
    return write(runs, settings, command, time.perf_counter() - tick, args.out)


def write(runs: dict, settings: dict, command: str, wall: float, out: Path) -> int:
    """Print the tables of `runs` and write them to `out`, the anytime plot beside it (.png)."""
    first = next(iter(runs))
    spec = sweep_spec(SPACES[first], settings["trials"], settings["epochs"], settings["concurrent"], "/tmp",
                      settings["startup"])
    table = summarise(runs, spec.report_epochs or tuple(range(1, spec.epochs + 1)), settings["startup"])
    extra = {(space, method): proposals(runs[space][method], spec, settings["startup"]) for space, method in table}
    text = render(table, extra, settings, command, wall)
    print(text)
    atomic_write(out, text)
    plot(runs, table, out.with_suffix(".png"))
    return 0


def atomic_write(path: Path, text: str) -> None:
    from aemodels.files import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


if __name__ == "__main__":
    sys.exit(main())
