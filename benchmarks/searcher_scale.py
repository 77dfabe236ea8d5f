"""The searcher at scale: CPU ms per suggestion as the study grows, and search quality, today's TPE vs sweep.tpe.

    python benchmarks/searcher_scale.py            # writes benchmarks/out/searcher_scale.md
    python benchmarks/searcher_scale.py --quick    # a smoke run of a few seconds (the test runs this)

1. Cost: a journal study of N finished trials (the space of configs/mnist.yaml; COMPLETE and PRUNED
   with 1-5 epoch values, as ASHA leaves them) and 64 running. CPU ms per suggestion, median over 3
   rounds of the mean of 20: Optuna's TPESampler as `sweep.searcher.make_sampler` builds it (what
   aesweep used before issue 18: study.ask() + the space's suggest calls), the searcher of today
   (`StudySearch.suggest`), and random sampling through the study (RandomSampler, study.ask()).
2. Quality: best val_loss reached against trial-epochs on a synthetic function of the four
   hyperparameters with learning curves, under an ASHA-like rule (rungs 1, 3, 9, 27 of 30 epochs,
   reduction factor 3, 8 trials at once), over several seeds: the old TPE, the new one, random.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MAX_EPOCHS = 5  # the cost study: a trial with 5 epoch values is COMPLETE, fewer PRUNED
RUNNING = 64


def _space():
    from sweep.spec import load

    return load(REPO / "configs" / "mnist.yaml")


def _quiet():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")


# ---- 1. cost per suggestion ---------------------------------------------------------------------

def _frozen(number: int, params: dict, space, rng: np.random.Generator):
    """A finished trial as ASHA leaves most of them: 1-5 epoch values, COMPLETE at 5, else PRUNED."""
    import optuna
    from optuna.trial import TrialState

    from sweep.searcher import distributions

    epochs = int(rng.choice([1, 2, 3, 4, 5], p=[0.6, 0.15, 0.1, 0.08, 0.07]))
    final = synthetic_final(params)
    values = {e: final + 0.05 * e ** -0.8 for e in range(1, epochs + 1)}
    state = TrialState.COMPLETE if epochs == MAX_EPOCHS else TrialState.PRUNED
    now = datetime.datetime.now()
    return optuna.trial.FrozenTrial(
        number=0, trial_id=0, state=state, value=values[epochs], datetime_start=now, datetime_complete=now,
        params=params, distributions=distributions(space.params, params),
        user_attrs={"tune_trial_id": f"b{number}", "status": "completed" if epochs == MAX_EPOCHS else "stopped",
                    "epochs": epochs}, system_attrs={}, intermediate_values=values)


def _timed(fn, rounds: int, per_round: int, after=None) -> float:
    """ms of CPU per call: the median over `rounds` of the mean of `per_round` calls (`after` untimed)."""
    means = []
    for _ in range(rounds):
        spent = 0.0
        for _ in range(per_round):
            tick = time.process_time()
            out = fn()
            spent += time.process_time() - tick
            if after:
                after(out)
        means.append(1000 * spent / per_round)
    return statistics.median(means)


def cost(sizes: list[int], rounds: int, per_round: int, running: int = RUNNING) -> list[dict]:
    import optuna
    from optuna.trial import TrialState

    from sweep.searcher import StudySearch, distributions, make_sampler
    from sweep.study import open_storage
    from sweep.space import SearchSpace
    from sweep.tpe import TPE

    spec = _space()
    space = SearchSpace(spec.space)
    draw = TPE(spec.space, seed=1, n_startup_trials=0)  # its random() draws the study's configurations
    rng = np.random.default_rng(1)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        base = f"{folder}/study.journal"
        study = optuna.create_study(study_name="bench", storage=open_storage(base), direction="minimize")
        done = 0
        for size in sorted(sizes):
            while done < size:
                study.add_trial(_frozen(done, draw.random(), space, rng))
                done += 1
            row = {"N": size}
            for name, sampler in (("old", make_sampler(spec.searcher, 0)),
                                  ("random", optuna.samplers.RandomSampler(seed=0))):
                path = f"{folder}/{name}-{size}.journal"
                shutil.copyfile(base, path)
                copy = optuna.load_study(study_name="bench", storage=open_storage(path), sampler=sampler)
                for _ in range(running):
                    params = draw.random()
                    copy.add_trial(optuna.trial.create_trial(
                        state=TrialState.RUNNING, params=params,
                        distributions=distributions(spec.space, params)))

                def ask(copy=copy):
                    trial = copy.ask()
                    space(trial)
                    return trial

                row[name] = _timed(ask, rounds, per_round, after=lambda t, copy=copy: copy.tell(t, state=TrialState.FAIL))
            path = f"{folder}/new-{size}.journal"
            shutil.copyfile(base, path)
            search = StudySearch(space, spec.searcher, path, "bench", MAX_EPOCHS)
            for i in range(running):
                search.suggest(f"r{i}")
            counter = iter(range(10**9))
            ends = []

            def end(config):
                tick = time.process_time()
                search.on_trial_complete(config, None, error=True)
                ends.append(time.process_time() - tick)

            def suggest():
                trial_id = f"s{next(counter)}"
                search.suggest(trial_id)
                return trial_id

            row["new"] = _timed(suggest, rounds, per_round, after=end)
            row["new_end"] = 1000 * statistics.median(ends)
            rows.append(row)
            print(f"  N={size}: old {row['old']:.1f} ms, new {row['new']:.2f} ms, random {row['random']:.1f} ms",
                  flush=True)
    return rows


# ---- 2. search quality ------------------------------------------------------------------------

BASE = {"vanilla": 0.030, "denoising": 0.028, "sparse": 0.031, "conv": 0.024}
LR_BEST = {"vanilla": -2.7, "denoising": -2.9, "sparse": -2.6, "conv": -3.2}  # log10 of the best lr


def synthetic_final(params: dict) -> float:
    """The loss a trial would reach at the last epoch: a bowl per variant in log lr and log2 latent_dim."""
    variant = params["variant"]
    loss = BASE[variant] + 0.010 * (math.log10(params["lr"]) - LR_BEST[variant]) ** 2
    loss += 0.001 * (math.log2(params["latent_dim"]) - 4.5) ** 2
    if variant == "denoising":
        loss += 0.02 * (params["noise_factor"] - 0.3) ** 2
    if variant == "sparse":
        loss += 0.003 * (math.log10(params["sparsity_weight"]) + 4) ** 2
    return loss


def synthetic_curve(params: dict, epoch: int, noise: float) -> float:
    """val_loss after `epoch` epochs: a higher lr gets down faster, so early epochs mislead a little."""
    return synthetic_final(params) + 0.05 * (1e-3 / params["lr"]) ** 0.3 * epoch ** -0.8 + noise


class OldTPE:
    """aesweep's searcher before issue 18, as it drove Optuna: ask, the space's suggest calls, report, tell."""

    def __init__(self, spec, seed: int):
        import optuna

        from sweep.searcher import make_sampler
        from sweep.space import SearchSpace

        self.study = optuna.create_study(sampler=make_sampler(spec.searcher, seed), direction="minimize")
        self.space, self.trials = SearchSpace(spec.space), {}

    def start(self, trial_id):
        trial = self.study.ask()
        self.trials[trial_id] = trial
        fixed = self.space(trial)  # first: it makes the suggest calls that fill trial.params
        return {**trial.params, **fixed}

    def report(self, trial_id, epoch, value):
        self.trials[trial_id].report(value, epoch)

    def end(self, trial_id, epoch, value, completed):
        from optuna.trial import TrialState

        trial = self.trials.pop(trial_id)
        if completed:
            self.study.tell(trial, value)
        else:
            self.study.tell(trial, state=TrialState.PRUNED)


class NewTPE:
    """The searcher of today (StudySearch) on a journal study, as Tune drives it."""

    def __init__(self, spec, seed: int, path: str, startup: int | None = None, max_t: int = 30):
        from sweep.searcher import StudySearch
        from sweep.space import SearchSpace

        searcher = dataclasses.replace(spec.searcher, seed=seed,
                                       n_startup_trials=spec.searcher.n_startup_trials if startup is None else startup)
        self.search = StudySearch(SearchSpace(spec.space), searcher, path, "q", max_t)

    def start(self, trial_id):
        return self.search.suggest(trial_id)

    def report(self, trial_id, epoch, value):
        self.search.on_trial_result(trial_id, {"val_loss": value, "epoch": epoch})

    def end(self, trial_id, epoch, value, completed):
        self.search.on_trial_complete(trial_id, {"val_loss": value, "epoch": epoch})


def asha_run(searcher, seed: int, budget: int, concurrent: int = 8, max_t: int = 30, rf: int = 3) -> list[tuple]:
    """(trial-epochs so far, best final val_loss of a completed trial) after each epoch, under an ASHA-like rule:
    at rungs 1, 3, 9, 27 a trial goes on only if its value is within the best 1/rf recorded at that rung."""
    rng = np.random.default_rng(seed)
    rungs = {r: [] for r in (1, 3, 9, 27) if r < max_t}
    active, spent, best, curve, next_id = [], 0, math.inf, [], 0
    while spent < budget:
        while len(active) < concurrent:
            trial_id = f"t{next_id}"
            next_id += 1
            active.append([trial_id, searcher.start(trial_id), 0])
        for entry in list(active):
            trial_id, params, epoch = entry
            epoch = entry[2] = epoch + 1
            value = synthetic_curve(params, epoch, 0.0005 * rng.standard_normal())
            spent += 1
            searcher.report(trial_id, epoch, value)
            if epoch >= max_t:
                searcher.end(trial_id, epoch, value, True)
                best = min(best, value)
                active.remove(entry)
            elif epoch in rungs:
                rungs[epoch].append(value)
                if value > np.percentile(rungs[epoch], 100 / rf):
                    searcher.end(trial_id, epoch, value, False)
                    active.remove(entry)
            curve.append((spent, best))
            if spent >= budget:
                break
    return curve


def quality(seeds: int, budget: int, max_t: int = 30) -> dict:
    spec = _space()
    points = [budget // 4, budget // 2, budget]
    found = {"old": [], "new": [], "random": []}
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(seeds):
            for name in found:
                if name == "old":
                    searcher = OldTPE(spec, seed)
                else:  # random: the same searcher, never past its start-up trials
                    searcher = NewTPE(spec, seed, f"{folder}/{name}-{seed}.journal",
                                      startup=10**9 if name == "random" else None, max_t=max_t)
                tick = time.process_time()
                curve = dict(asha_run(searcher, seed, budget, max_t=max_t))
                found[name].append([curve[p] for p in points] + [time.process_time() - tick])
            print(f"  seed {seed}: " + ", ".join(f"{n} {v[-1][-2]:.5f}" for n, v in found.items()), flush=True)
    return {"points": points, "found": found, "max_t": max_t}


# ---- output -------------------------------------------------------------------------------------

def render(rows: list[dict], q: dict, argv: list[str], rounds: int, per_round: int) -> str:
    import optuna
    import ray

    sizes = [r["N"] for r in rows]
    lines = [f"# Searcher at scale ({datetime.date.today()})", "",
             f"- command: `python benchmarks/searcher_scale.py {' '.join(argv)}`".replace(" `", " `", 1),
             f"- machine: {platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
             f"Optuna {optuna.__version__}, Ray {ray.__version__}",
             f"- a journal study of N finished trials (COMPLETE and PRUNED, 1-5 epoch values) and {RUNNING} running, "
             f"the space of configs/mnist.yaml; CPU ms per suggestion, median of {rounds} rounds x {per_round}", "",
             "| finished trials N | " + " | ".join(f"{n:,}" for n in sizes) + " |",
             "| --- |" + " ---: |" * len(sizes)]
    names = (("old", "TPE before issue 18 (Optuna TPESampler, make_sampler)"), ("new", "StudySearch (sweep.tpe)"),
             ("random", "random through the study (RandomSampler)"),
             ("new_end", "StudySearch: a trial's end (study.add_trial)"))
    for key, label in names:
        lines.append(f"| {label} | " + " | ".join(_ms(r[key]) for r in rows) + " |")
    found, points = q["found"], q["points"]
    seeds = len(found["old"])
    lines += ["", f"Search quality: best final val_loss of a completed trial after so many trial-epochs "
                  f"(synthetic function, ASHA-like rungs {'/'.join(str(r) for r in (1, 3, 9, 27) if r < q['max_t'])} of {q['max_t']} epochs, 8 at once; mean ± sd over {seeds} seeds; "
                  f"lower is better)", "",
              "| searcher | " + " | ".join(f"{p:,} trial-epochs" for p in points) + " | CPU s per run |",
              "| --- |" + " ---: |" * (len(points) + 1)]
    for name, label in (("old", "TPE before issue 18"), ("new", "StudySearch (sweep.tpe)"), ("random", "random")):
        runs = np.array(found[name])
        cells = [_mean_sd(runs[:, i]) for i in range(len(points))]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {np.mean(runs[:, -1]):.2f} |")
    old, new = np.array(found["old"]), np.array(found["new"])
    wins = [int(np.sum(new[:, i] <= old[:, i])) for i in range(len(points))]
    lines.append("| new at or below old, seeds | " + " | ".join(f"{w} of {seeds}" for w in wins) + " | |")
    return "\n".join(lines)


def _mean_sd(values: np.ndarray) -> str:
    done = values[np.isfinite(values)]
    if len(done) < len(values):  # runs with no trial completed yet
        return f"{len(values) - len(done)} of {len(values)} runs with none complete"
    return f"{np.mean(done):.5f} ± {np.std(done):.5f}"


def _ms(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="500,1000,2000,5000,10000")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--budget", type=int, default=900, help="trial-epochs per quality run")
    parser.add_argument("--max-t", type=int, default=30, help="epochs of a trial ASHA never stops (quality runs)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 seeds, 4-epoch trials: seconds")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "searcher_scale.md"))
    args = parser.parse_args(argv)
    _quiet()
    rounds, per_round = 3, 20
    if args.quick:
        args.sizes, args.seeds, args.budget, args.max_t, rounds, per_round = "40,80", 2, 60, 4, 1, 3
    print("cost per suggestion:", flush=True)
    rows = cost([int(s) for s in args.sizes.split(",")], rounds, per_round, running=8 if args.quick else RUNNING)
    print("search quality:", flush=True)
    text = render(rows, quality(args.seeds, args.budget, args.max_t), argv, rounds, per_round)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
