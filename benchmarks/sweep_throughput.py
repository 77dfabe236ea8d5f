"""Sweep throughput: the reference sweep through aesweep, per execution mode, beside the docs-style anchors.

The reference sweep is ../shared/bench/anchor_tune.py's: OptunaSearch TPE over latent_dim in
{2, 8, 16, 32, 64} and lr log-uniform [1e-4, 1e-2], vanilla, batch 128, ASHA (grace 1, reduction 3).
On a GPU: full MNIST, 256 trials, at most 10 epochs. On a CPU: a 6,000-image subset, 32 trials, at
most 5 epochs. Each mode runs on a Ray started beforehand (Ray's start-up is not counted, as in the
anchors); the anchors run in the same call, so the ratio is measured on one machine at one time.

    python benchmarks/sweep_throughput.py --device auto          # writes benchmarks/out/sweep_throughput.md

Prints, per mode: wall time, trial-epochs per minute, the share of the cores' (or the GPU's) time
spent inside training epochs with the rest itemised, best val_loss found, and on a GPU the GPU's
utilisation and memory per trial.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO.parent / "shared" / "bench"
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # as `sweep run` starts its local Ray


def reference_spec(device: str, trials: int, epochs: int, subset, storage: str, execution: str,
                   pack_size=None) -> dict:
    return {
        "name": f"throughput-{execution}", "dataset": "mnist",
        "train": {"epochs": epochs, "batch_size": 128, "train_subset": subset, "seed": 0, "device": device},
        "space": {"variant": "vanilla", "latent_dim": {"choice": [2, 8, 16, 32, 64]},
                  "lr": {"loguniform": [1.0e-4, 1.0e-2]}},
        "searcher": {"seed": 0, "n_startup_trials": 10},
        "scheduler": {"grace_period": 1, "reduction_factor": 3},
        "num_samples": trials, "storage_path": storage,
        "resources": {"execution": execution, "cpu": 1, "gpu": "auto", "pack_size": pack_size},
    }


class GpuSampler:
    """nvidia-smi every 0.5 s while a sweep runs: mean utilisation and peak memory."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
                util, mem = out.stdout.splitlines()[0].split(",")
                self.samples.append((float(util), float(mem)))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self) -> dict:
        if not self.samples:
            return {}
        return {"gpu_util_pct": sum(u for u, _ in self.samples) / len(self.samples),
                "gpu_mem_peak_mib": max(m for _, m in self.samples)}


class SearcherTimer:
    """Wall seconds of each call the Tune driver makes into `cls` (the study searcher) while a sweep runs
    in this process: what a trial hand-over waits for on the driver, besides Tune itself."""

    METHODS = ("suggest", "on_trial_complete", "on_trial_result")

    def __init__(self, cls):
        self.cls, self.calls = cls, {name: [] for name in self.METHODS}
        self._originals = {name: cls.__dict__[name] for name in self.METHODS}

    def _timed(self, name):
        original, calls = self._originals[name], self.calls[name]

        def timed(*args, **kwargs):
            tick = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                calls.append(time.perf_counter() - tick)
        return timed

    def __enter__(self):
        for name in self.METHODS:
            setattr(self.cls, name, self._timed(name))
        return self

    def __exit__(self, *exc):
        for name, original in self._originals.items():
            setattr(self.cls, name, original)

    def summary(self) -> dict:
        """Median milliseconds per call, by method (on_trial_complete includes its last on_trial_result)."""
        return {f"{name}_ms": 1000 * float(pd.Series(calls).median()) for name, calls in self.calls.items() if calls}


def run_mode(execution: str, args, storage: str) -> dict:
    import ray

    from sweep import results, runner, spec
    from sweep.searcher import StudySearch

    sweep = spec.parse(reference_spec(args.device, args.trials, args.epochs, args.subset, storage, execution,
                                      args.pack_size))
    tick = time.perf_counter()
    runner.connect(None, False, sweep)  # as `sweep run` starts its local Ray
    ray_start = time.perf_counter() - tick
    try:
        gpu = GpuSampler() if args.gpu else None
        tick, cpu_tick, began = time.perf_counter(), time.process_time(), time.time()
        with gpu or _nothing(), SearcherTimer(StudySearch) as searcher:
            runner.run(sweep, overwrite=True, argv=["benchmarks/sweep_throughput.py"])
        wall, driver_cpu, ended = time.perf_counter() - tick, time.process_time() - cpu_tick, time.time()
        plan = runner.plan(sweep)
    finally:
        ray.shutdown()
    found = results.load_results(str(Path(storage) / sweep.name))
    rows = _iterations(Path(storage) / sweep.name)
    cores = os.cpu_count()
    out = {"mode": execution, "wall_s": wall, "ray_start_s": ray_start, "driver_cpu_s": driver_cpu,
           "began_at": began, "ended_at": ended,
           "trials": len(found.trials),
           "trial_epochs": int(found.trials["epochs"].sum()),
           "best_val_loss": float(found.trials.loc[found.trials["status"] == "completed", "final_val_loss"].min()),
           "concurrent": plan.max_concurrent}
    out["trial_epochs_per_min"] = 60 * out["trial_epochs"] / wall
    epochs_s, iter_s = rows["epoch_s"].sum(), rows["time_this_iter_s"].sum()
    first = rows.groupby("trial_id").head(1)
    setup_s = (first["time_this_iter_s"] - first["epoch_s"]).clip(lower=0).sum()
    if execution == "packed":
        trainers = json.loads((Path(storage) / sweep.name / "trainers.json").read_text())
        train_s = sum(t["train_s"] for t in trainers)  # each trainer owns one GPU, or one core
        out.update(busy=train_s / (wall * len(trainers)), trainers=len(trainers),
                   trainer_rounds=sum(t["rounds"] for t in trainers),
                   serialize_s=sum(t["serialize_s"] for t in trainers), restack_s=sum(t["restack_s"] for t in trainers),
                   trainer_wait_s=sum(t["wait_s"] for t in trainers))
    else:
        slots = plan.max_concurrent if args.gpu else cores
        out.update(busy=epochs_s / (wall * slots), epochs_s=epochs_s, setup_s=setup_s,
                   report_s=iter_s - epochs_s - setup_s, idle_s=wall * slots - iter_s, slots=slots,
                   **idle_split(rows, slots, began, ended), **handovers(rows, slots), **searcher.summary())
    out["busy_from_ray_start"] = out["busy"] * wall / (wall + ray_start)
    if gpu is not None:
        out.update(gpu.summary())
        if "gpu_mem_peak_mib" in out:
            out["gpu_mem_per_trial_mib"] = out["gpu_mem_peak_mib"] / max(1, plan.max_concurrent)
    return out


def _iterations(home: Path) -> pd.DataFrame:
    """Every reported result of every trial (Ray's result.json), for the time accounting. A result at a
    rung stands for the epochs it carries too: its epoch_s is theirs summed, as time_this_iter_s spans them."""
    from sweep.epochs import epoch_rows

    frames = []
    for path in (home / "ray").glob("*/result.json"):  # not pd.read_json: it makes `reported_at` a datetime
        results = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        frame = pd.DataFrame([{**r, "epoch_s": sum(row["epoch_s"] for row in epoch_rows(r))} for r in results])
        frames.append(frame[["trial_id", "epoch", "epoch_s", "time_this_iter_s", "reported_at"]])
    return pd.concat(frames, ignore_index=True)


def _begins(rows: pd.DataFrame) -> pd.Series:
    """When each reported iteration began, on the driver's clock (Tune times an iteration from the last report)."""
    return rows["reported_at"] - rows["time_this_iter_s"]


def idle_split(rows: pd.DataFrame, slots: int, began: float, ended: float) -> dict:
    """Slot-seconds in which a slot runs no trial iteration, by when: before the first iteration
    (Tune's start, actor start-up), between trials while more are to start, in the tail (the last
    trial has started; fewer trials than slots remain), and after the last report (tables)."""
    begun = _begins(rows)
    starts, ends = begun.to_numpy(), rows["reported_at"].to_numpy()
    first, last_end = starts.min(), ends.max()
    last_start = begun.groupby(rows["trial_id"]).min().max()  # the last trial to start, starts
    events = sorted([(t, 1) for t in starts] + [(t, -1) for t in ends])
    split = {"idle_start_s": slots * (first - began), "idle_between_s": 0.0, "idle_tail_s": 0.0,
             "idle_end_s": slots * (ended - last_end)}
    active, previous = 0, first
    for at, change in events:
        key = "idle_between_s" if previous < last_start else "idle_tail_s"
        split[key] += (at - previous) * max(0, slots - active)
        active, previous = active + change, at
    return split


def handovers(rows: pd.DataFrame, slots: int) -> dict:
    """Medians, in milliseconds, of what one trial-to-trial hand-over and one epoch-to-epoch report cost.

    handover: from the newest trial end to the next trial's start on the freed actor (Tune's result
    handling, ASHA, the searcher's tell and suggest, the actor's reset); setup: from that start to the
    first epoch (the trial function building its model and data; the first trial of each worker, which
    also imports torch, is left out); round trip: between epochs of one trial (report, checkpoint copy,
    the driver's reply). Trials that start before any trial has ended (the first wave) have no hand-over.
    """
    begun = _begins(rows)
    starts = begun.groupby(rows["trial_id"]).min().sort_values()
    ends = rows["reported_at"].groupby(rows["trial_id"]).max().sort_values().to_numpy()
    gaps = [start - ends[ends <= start].max() for start in starts.iloc[slots:] if (ends <= start).any()]
    first = rows.loc[begun.groupby(rows["trial_id"]).idxmin()].set_index("trial_id").loc[starts.index[slots:]]
    later = rows[begun > begun.groupby(rows["trial_id"]).transform("min")]
    median_ms = lambda values: 1000 * float(pd.Series(values, dtype=float).median())  # noqa: E731
    return {"handover_ms": median_ms(gaps), "trial_setup_ms": median_ms(first["time_this_iter_s"] - first["epoch_s"]),
            "round_trip_ms": median_ms(later["time_this_iter_s"] - later["epoch_s"])}


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def run_anchors(args, data_root: str) -> list[dict]:
    """../shared/bench's docs-style sweeps, as separate processes in this same call."""
    env = {**os.environ, "TV_ROOT": data_root, "PYTHONUNBUFFERED": "1"}
    runs = []
    if args.gpu:
        commands = [[sys.executable, str(BENCH / "anchor_tune.py"), "resident", str(args.anchor_gpu_fraction),
                     str(args.anchor_trials), str(args.epochs), "reuse"]]
        env["MNIST_GZ"] = str(REPO.parent / "shared" / "data" / "mnist")
    else:
        commands = [[sys.executable, str(BENCH / "anchor_tune_cpu.py"), str(args.anchor_trials), str(args.epochs),
                     "reuse"],
                    [sys.executable, str(BENCH / "tune_overhead_cpu.py"), "reuse"]]
    for command in commands:
        tick = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
        wall = time.perf_counter() - tick
        line = next((l for l in reversed(proc.stdout.splitlines()) if l.strip()), "")
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            result = {"output": line or proc.stderr.strip().splitlines()[-1:]}
        runs.append({"command": " ".join(Path(c).name if i == 1 else c for i, c in enumerate(command[1:], 1)),
                     "process_wall_s": wall, **result})
    return runs


def render(args, modes: list[dict], anchors: list[dict], command: str) -> str:
    import torch

    gpu = torch.cuda.get_device_name() if args.gpu else "none"
    lines = [f"# Sweep throughput ({datetime.date.today()})", "",
             f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, GPU: {gpu}",
             f"- torch {torch.__version__}; reference sweep: vanilla, latent_dim {{2,8,16,32,64}}, lr log [1e-4, 1e-2], "
             f"{args.trials} trials, max {args.epochs} epochs, {args.subset or 60000} images, batch 128, ASHA grace 1 / rf 3",
             f"- command: `{command}`", "",
             "| mode | wall s | trial-epochs | trial-epochs/min | busy | best val_loss | concurrent | notes |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    anchor_rate = next((a.get("trial_epochs_per_min") for a in anchors if "trial_epochs_per_min" in a), None)
    for m in modes:
        notes = []
        if m["mode"] == "trial":
            notes.append(f"of {m['slots']} slots x wall: epochs {m['epochs_s']:.1f} s, first-epoch setup "
                         f"{m['setup_s']:.1f} s, report+checkpoint {m['report_s']:.1f} s, idle {m['idle_s']:.1f} s "
                         f"(before the first epoch {m['idle_start_s']:.1f}, between trials {m['idle_between_s']:.1f}, "
                         f"tail {m['idle_tail_s']:.1f}, after the last {m['idle_end_s']:.1f}); medians: trial "
                         f"hand-over {m['handover_ms']:.0f} ms (study tell {m.get('on_trial_complete_ms', 0):.0f}, "
                         f"TPE suggest {m.get('suggest_ms', 0):.0f}), trial set-up {m['trial_setup_ms']:.0f} ms, "
                         f"epoch report round trip {m['round_trip_ms']:.0f} ms (study report "
                         f"{m.get('on_trial_result_ms', 0):.0f})")
        else:
            notes.append(f"{m['trainers']} trainer(s): {m['trainer_rounds']} rounds, serialize {m['serialize_s']:.1f} s, restack "
                         f"{m['restack_s']:.1f} s, waiting for trials {m['trainer_wait_s']:.1f} s")
        if "gpu_util_pct" in m:
            notes.append(f"GPU {m['gpu_util_pct']:.0f}% busy, {m.get('gpu_mem_per_trial_mib', 0):.0f} MiB/trial")
        if anchor_rate:
            notes.append(f"{m['trial_epochs_per_min'] / anchor_rate:.1f}x the anchor")
        notes.append(f"Tune driver used {m['driver_cpu_s']:.1f} s of CPU; Ray start {m['ray_start_s']:.1f} s not counted "
                     f"(busy {m['busy_from_ray_start']:.2f} counting it)")
        label = m["mode"] if args.repeat == 1 else f"{m['mode']} #{m['run']}"
        lines.append(f"| aesweep {label} | {m['wall_s']:.1f} | {m['trial_epochs']} | {m['trial_epochs_per_min']:.1f} | "
                     f"{m['busy']:.2f} | {m['best_val_loss']:.5f} | {m['concurrent']} | {'; '.join(notes)} |")
    for a in anchors:
        rate = a.get("trial_epochs_per_min")
        lines.append(f"| anchor `{a['command']}` | {a.get('wall_s', a['process_wall_s']):.1f} | "
                     f"{a.get('trial_epochs', '-')} | {rate if rate is not None else '-'} | {a.get('busy_share', '-')} | "
                     f"{a.get('best_loss', '-')} | - | {a.get('output', '') or 'docs-style Tune sweep'} |")
    if args.repeat > 1:
        lines += ["", "| mode | runs | busy min / median / max | trial-epochs/min min / median / max | trial-epochs |",
                  "| --- | ---: | --- | --- | --- |"]
        for mode in dict.fromkeys(m["mode"] for m in modes):
            runs = pd.DataFrame([m for m in modes if m["mode"] == mode])
            spread = lambda col, f: " / ".join(f.format(v) for v in runs[col].quantile([0, 0.5, 1]))  # noqa: E731
            lines.append(f"| aesweep {mode} | {len(runs)} | {spread('busy', '{:.3f}')} | "
                         f"{spread('trial_epochs_per_min', '{:.1f}')} | {runs['trial_epochs'].min()}-"
                         f"{runs['trial_epochs'].max()} |")
    lines += ["", "busy: seconds inside training epochs (train + val_loss) over wall x slots for trial execution; "
              "for packed execution, the trainers' seconds inside packed epochs over wall x trainers (one trainer "
              "per GPU, or per core on a CPU). Ray's start-up is outside the wall time, as in the anchors; the notes "
              "give the share with it counted too, since worker processes start (and import torch) during it.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--modes", default="trial,packed", help="comma-separated: trial, packed")
    parser.add_argument("--trials", type=int, help="default: 256 on a GPU, 32 on a CPU")
    parser.add_argument("--epochs", type=int, help="max epochs per trial; default: 10 on a GPU, 5 on a CPU")
    parser.add_argument("--subset", type=int, help="training images; default: all on a GPU, 6000 on a CPU")
    parser.add_argument("--anchor-trials", type=int, help="trials of the anchor sweep; default 48 on a GPU, = --trials on CPU")
    parser.add_argument("--anchor-gpu-fraction", type=float, default=0.0625)
    parser.add_argument("--pack-size", type=int, help="members per packed trainer (default: 256 GPU, 16 CPU)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each mode, one after another; the table "
                        "adds each mode's minimum, median and maximum (a run's busy share varies by a few points)")
    parser.add_argument("--no-anchors", action="store_true")
    parser.add_argument("--storage", default=None, help="where the sweeps write and stay (default: a temporary "
                        "folder, removed at the end)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "sweep_throughput.md"))
    args = parser.parse_args(argv)
    import torch

    args.gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    args.device = "cuda" if args.gpu else "cpu"
    args.trials = args.trials or (256 if args.gpu else 32)
    args.epochs = args.epochs or (10 if args.gpu else 5)
    args.subset = args.subset if args.subset is not None else (None if args.gpu else 6000)
    args.anchor_trials = args.anchor_trials or (48 if args.gpu else args.trials)
    from aemodels import ensure_dataset

    data_root = str(ensure_dataset("mnist"))
    with contextlib.ExitStack() as scratch:  # a sweep's folder holds ~0.6 GB of checkpoints: kept only if asked
        storage = args.storage or scratch.enter_context(tempfile.TemporaryDirectory(prefix="aesweep-throughput-"))
        modes = [{**run_mode(m.strip(), args, storage), "run": i + 1}
                 for m in args.modes.split(",") if m.strip() for i in range(args.repeat)]
    anchors = [] if args.no_anchors else run_anchors(args, data_root)
    text = render(args, modes, anchors, "python " + " ".join([Path(sys.argv[0]).name if sys.argv[0] else "",
                                                               *sys.argv[1:]]).strip())
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    (out.with_suffix(".json")).write_text(json.dumps({"modes": modes, "anchors": anchors}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
