"""The sweep at scale on a simulated cluster (issue 19): simulated training, GPUs declared to Ray, one or more drivers.

    python benchmarks/scale.py                          # 1,000 and 5,000 trials x 1 and 8 declared GPUs
    python benchmarks/scale.py --trials 1000 --gpus 8   # one row per protocol
    python benchmarks/scale.py --quick                  # 40 trials, 2 GPUs: a smoke run (the test runs this)
    python benchmarks/scale.py --protocol before:scheduler.report=epoch --protocol now --protocol "now, 2 drivers:drivers=2"
                                                        # the default three
    python benchmarks/scale.py --profile                # also a cProfile of each driver (benchmarks/out/)

configs/mnist.yaml's shape (four variants, conditional space, 30 epochs, ASHA grace 1 / rf 3) with
`simulate: {seconds_per_epoch: 0}`: every trial runs through the packed path (one PackTrainer per declared
GPU, a proxy per trial, checkpoints, ASHA, tables) and trains nothing, so what is measured is the
orchestration. Each row is a fresh driver process on a fresh local Ray with `num_gpus` declared.
A protocol is LABEL[:KEY=VALUE,...]: KEY is a sweep-file key (as `sweep run --set`), or an environment
variable of the driver when it is in capitals (e.g. TUNE_GLOBAL_CHECKPOINT_S=auto, Tune's default).
Driver CPU is summed over a sweep's drivers (`drivers: N`: sweep.drivers).
The 2-core machine cannot host 256 proxies per GPU: concurrency is capped (--concurrent) and split
evenly over the declared GPUs (resources.pack_size).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "benchmarks" / "out"
# Tune's own defaults: what a protocol sets to measure "before" the sweep's own settings (item 2).
TUNE_DEFAULTS = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0,TUNE_GLOBAL_CHECKPOINT_S=auto"
DEFAULT_PROTOCOLS = ["before:scheduler.report=epoch", "now", "now, 2 drivers:drivers=2"]


def parse_protocol(text: str) -> tuple[str, list[str], dict[str, str]]:
    """'label:key=value,ENV=value' -> (label, spec overrides, environment)."""
    label, _, rest = text.partition(":")
    overrides, env = [], {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--protocol {text!r}: {item!r} is not KEY=VALUE")
        if key.isupper():
            env[key] = value
        else:
            overrides.append(item)
    return label, overrides, env


class ProcessSampler:
    """What the driver and every process it started (Ray's GCS, raylet, workers, trainers, other drivers) did:
    bytes written to storage (/proc/<pid>/io write_bytes) and CPU seconds (/proc/<pid>/stat utime + stime), by
    process, sampled every 0.2 s and the last sample of each process kept (a worker that exits keeps what it
    had used 0.2 s before). A process is named by what it ran: a Ray worker by its actor or task, kept from
    its last title other than IDLE, and a process that has exited by its name while it ran."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, root_pid: int):
        self.root, self.written_by, self.cpu_by, self.name_of = root_pid, {}, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _descendants(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry))
        found, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def _name(self, pid: int) -> str:
        if pid == self.root:
            return "driver"
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
        line = " ".join(argv)
        if line.startswith("ray::"):
            name = line[5:].split()[0].split(".")[0] if len(line) > 5 else "worker"
            return "idle worker" if name == "IDLE" else name
        if "sweep.driver " in line:
            return "other drivers"
        for part in argv[:3]:
            base = os.path.basename(part)
            if base and not base.startswith("python") and not base.startswith("-"):
                return base.removesuffix(".py")
        return os.path.basename(argv[0]) if argv else "?"

    def sample(self) -> None:
        for pid in self._descendants():
            try:
                with open(f"/proc/{pid}/io") as fh:
                    values = dict(line.split(": ") for line in fh.read().splitlines())
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                name = self._name(pid)
            except (OSError, KeyError, ValueError, IndexError):
                continue
            self.written_by[pid] = int(values["write_bytes"])
            self.cpu_by[pid] = (int(fields[11]) + int(fields[12])) / self.TICK
            if name not in ("idle worker", "?") or pid not in self.name_of:  # "?": exited, not yet reaped
                self.name_of[pid] = name

    def _run(self):
        while not self._stop.wait(0.2):
            self.sample()

    def __enter__(self):
        self.sample()
        self.start_written, self.start_cpu = dict(self.written_by), dict(self.cpu_by)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()

    def written(self) -> int:
        return sum(v - self.start_written.get(pid, 0) for pid, v in self.written_by.items())

    def cpu_by_name(self) -> dict[str, float]:
        """CPU seconds spent during the run, by process name, largest first."""
        totals: dict[str, float] = {}
        for pid, seconds in self.cpu_by.items():
            name = self.name_of.get(pid, "?")
            totals[name] = totals.get(name, 0.0) + seconds - self.start_cpu.get(pid, 0.0)
        return dict(sorted(totals.items(), key=lambda item: -item[1]))


def sweep_raw(trials: int, gpus: int, concurrent: int, storage: str) -> dict:
    """configs/mnist.yaml, simulated, with the concurrency this machine can host."""
    from sweep.spec import read_yaml

    raw = read_yaml(REPO / "configs" / "mnist.yaml")
    raw.update(name=f"scale-{trials}-{gpus}gpu", num_samples=trials, storage_path=storage,
               simulate={"seconds_per_epoch": 0}, max_concurrent_trials=concurrent)
    raw["resources"] = {**raw["resources"], "execution": "packed", "pack_size": max(1, math.ceil(concurrent / gpus))}
    return raw


def run_one(job: dict) -> dict:
    """One row, in this (fresh) process: the driver of one sweep on a local Ray with `gpus` declared."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.update(job["env"])
    import ray

    from sweep import results, runner
    from sweep.plan import driver_pools
    from sweep.spec import apply_override, parse

    raw = sweep_raw(job["trials"], job["gpus"], job["concurrent"], job["storage"])
    for item in job["overrides"]:
        apply_override(raw, item)
    spec = parse(raw, source="scale")
    ray.init(num_cpus=os.cpu_count(), num_gpus=job["gpus"], include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False,
             _system_config={"preload_python_modules": list(runner.TRIAL_CODE), "enable_worker_prestart": True},
             resources=driver_pools(spec.drivers))  # as the sweep's own local Ray (runner.connect)
    profiler = None
    if job.get("profile"):
        import cProfile

        profiler = cProfile.Profile(time.thread_time)  # the main thread's CPU: where the driver works, not waits
    def children_cpu() -> float:  # the other drivers (sweep.drivers), once waited for; Ray's processes are not yet
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    try:
        with ProcessSampler(os.getpid()) as processes:
            tick, cpu_tick, children_tick = time.perf_counter(), time.process_time(), children_cpu()
            if profiler:
                profiler.enable()
            runner.run(spec, overwrite=True, argv=["benchmarks/scale.py"])
            if profiler:
                profiler.disable()
            wall = time.perf_counter() - tick
            cpu = time.process_time() - cpu_tick + children_cpu() - children_tick
    finally:
        ray.shutdown()
    if profiler:
        profiler.dump_stats(job["profile"])
    home = Path(job["storage"]) / spec.name
    found = results.load_results(str(home))
    epochs = int(found.trials["epochs"].sum())
    stamps = found.epochs["timestamp"].dropna().sort_values().to_numpy()
    low, high = stamps[int(0.1 * len(stamps))], stamps[int(0.9 * len(stamps)) - 1]
    sustained = (0.8 * len(stamps)) / (high - low) if high > low else float("nan")
    tune_results = sum(sum(1 for _ in open(p)) for folder in results.experiment_dirs(home, spec)
                       for p in folder.glob("*/result.json"))
    trainers = json.loads((home / "trainers.json").read_text()) if (home / "trainers.json").is_file() else []
    statuses = found.trials["status"].value_counts().to_dict()
    return {"protocol": job["label"], "trials": len(found.trials), "gpus": job["gpus"], "drivers": spec.drivers,
            "concurrent": job["concurrent"], "trial_epochs": epochs, "wall_s": wall,
            "trial_epochs_per_s": epochs / wall, "sustained_per_s": sustained,
            "driver_cpu_ms_per_trial": 1000 * cpu / len(found.trials),
            "driver_cpu_ms_per_epoch": 1000 * cpu / epochs, "results_per_epoch": tune_results / epochs,
            "mb_written_per_epoch": processes.written() / 1e6 / epochs,
            "cpu_ms_per_trial_by_process": {name: 1000 * s / len(found.trials)
                                            for name, s in processes.cpu_by_name().items()},
            "driver_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "trainers": len(trainers), "torch_in_trainers": any(t.get("torch_imported") for t in trainers),
            "epoch_rows_complete": bool(len(found.epochs) == epochs), "statuses": statuses,
            "mean_epochs": epochs / len(found.trials),
            "trial_processes": sum(1 for name in processes.name_of.values() if name == "ImplicitFunc"),
            # How many trials ran at once on average (their wall time over the span of epochs), and how many
            # members a pack's round trained: what `concurrent` asked for is not necessarily what ran.
            "mean_running": float(found.trials["wall_s"].sum() / (stamps[-1] - stamps[0])) if len(stamps) > 1 else float("nan"),
            "mean_pack": float(found.epochs["pack_size"].mean())}


COLUMNS = [("protocol", "protocol", "{}"), ("trials", "trials", "{:,}"), ("gpus", "declared GPUs", "{}"),
           ("drivers", "drivers", "{}"), ("concurrent", "trials at once", "{}"),
           ("trial_epochs", "trial-epochs", "{:,}"), ("wall_s", "wall s", "{:.0f}"),
           ("trial_epochs_per_s", "trial-epochs/s (whole run)", "{:.1f}"),
           ("sustained_per_s", "trial-epochs/s sustained", "{:.1f}"),
           ("driver_cpu_ms_per_trial", "driver CPU ms / trial", "{:.0f}"),
           ("driver_cpu_ms_per_epoch", "driver CPU ms / trial-epoch", "{:.1f}"),
           ("results_per_epoch", "Tune results / trial-epoch", "{:.2f}"),
           ("mb_written_per_epoch", "MB written / trial-epoch", "{:.3f}"),
           ("driver_peak_mb", "driver peak MB", "{:.0f}")]


def render(rows: list[dict], command: str) -> str:
    lines = [f"# Scale on a simulated cluster ({datetime_now()})", "",
             f"Command: `{command}`  ", f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
             f"Python {platform.python_version()}, GPUs declared to Ray (none present); simulated training at 0 s "
             "per member-epoch.", "",
             "| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "| " + " | ".join("---" if k == "protocol" else "---:" for k, _, _ in COLUMNS) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(f.format(row[k]) for k, _, f in COLUMNS) + " |")
    lines.append("")
    for row in rows:
        lines.append(f"- {row['protocol']}, {row['trials']} trials, {row['gpus']} GPUs: {row['trainers']} trainers "
                     f"(torch imported in one: {row['torch_in_trainers']}), statuses {row['statuses']}, "
                     f"{row['mean_epochs']:.2f} epochs per trial, epochs.parquet complete: {row['epoch_rows_complete']}, "
                     f"worker processes that ran trials: {row['trial_processes']}, trials running at once (mean): "
                     f"{row['mean_running']:.1f}, members per pack round (mean): {row['mean_pack']:.1f}")
    lines += ["", "CPU ms per trial, by process (all of the sweep's processes on this machine, sampled from /proc):", ""]
    for row in rows:
        by_process = row["cpu_ms_per_trial_by_process"]
        lines.append(f"- {row['protocol']}, {row['trials']} trials, {row['gpus']} GPUs: total "
                     f"{sum(by_process.values()):.0f}: " + ", ".join(f"{name} {ms:.0f}" for name, ms in by_process.items()
                                                                  if ms >= 0.5))
    return "\n".join(lines) + "\n"


def datetime_now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--concurrent", type=int, default=16, help="trials at once (proxies), over all GPUs")
    parser.add_argument("--protocol", action="append", default=None,
                        help="LABEL[:KEY=VALUE,...]; repeat to compare (default: per-epoch reporting as "
                             "before issue 19, and the sweep's defaults now)")
    parser.add_argument("--quick", action="store_true", help="40 trials on 2 declared GPUs")
    parser.add_argument("--profile", action="store_true", help="cProfile each driver's main thread (CPU time) into benchmarks/out/")
    parser.add_argument("--out", type=Path, default=OUT / "scale.md")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a row's job, run in a fresh process
    args = parser.parse_args(argv)
    if args.one:
        print("ROW " + json.dumps(run_one(json.loads(args.one))), flush=True)
        return 0
    if args.quick:
        args.trials, args.gpus, args.concurrent = [40], [2], 4
    protocols = [parse_protocol(p) for p in (args.protocol or DEFAULT_PROTOCOLS)]
    rows = []
    storage = tempfile.mkdtemp(prefix="aesweep-scale-")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        for trials in args.trials:
            for gpus in args.gpus:
                for label, overrides, env in protocols:
                    profile = str(args.out.parent / f"scale-{label}-{trials}-{gpus}gpu.prof") if args.profile else None
                    job = {"label": label, "trials": trials, "gpus": gpus, "concurrent": args.concurrent,
                           "overrides": overrides, "env": env, "storage": storage, "profile": profile}
                    out = subprocess.run([sys.executable, __file__, "--one", json.dumps(job)], capture_output=True,
                                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
                    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("ROW ")), None)
                    if line is None:
                        sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
                        raise SystemExit(f"the run {label} / {trials} trials / {gpus} GPUs failed (exit {out.returncode})")
                    rows.append(json.loads(line[4:]))
                    print(json.dumps(rows[-1]), flush=True)
                    shutil.rmtree(Path(storage) / f"scale-{trials}-{gpus}gpu", ignore_errors=True)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    text = render(rows, "python benchmarks/scale.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
