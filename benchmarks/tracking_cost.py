"""What logging every trial to a tracking server costs a sweep: the same small simulated sweep (configs/quick.yaml,
replayed curves, 0 s an epoch, so the sweep is all overhead) without tracking, with MLflow (a local `mlflow
server` on a SQLite store, started here and not timed) and with W&B offline, the modes alternated.

    python benchmarks/tracking_cost.py --repeat 2          # writes benchmarks/out/tracking_cost.md
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = ("none", "mlflow", "wandb")


def start_mlflow(folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=5):
                return server, uri
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("mlflow server did not start")
            time.sleep(0.5)


def sweep_seconds(mode: str, folder: Path, uri: str, args, run: int) -> float:
    tracking = {"none": [], "mlflow": ["--set", f"tracking.mlflow.uri={uri}"],
                "wandb": ["--set", "tracking.wandb.mode=offline"]}[mode]
    command = [sys.executable, "-m", "sweep.cli", "run", str(REPO / "configs" / "quick.yaml"), "--name",
               f"{mode}-{run}", "--set", f"storage_path={folder}", "--set", f"num_samples={args.trials}",
               "--set", f"drivers={args.drivers}", "--set", "simulate.seconds_per_epoch=0", *tracking]
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    return time.monotonic() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--drivers", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "tracking_cost.md"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        server, uri = start_mlflow(folder)
        try:
            seconds = {mode: [] for mode in MODES}
            for run in range(args.repeat):
                for mode in MODES:
                    seconds[mode].append(sweep_seconds(mode, folder, uri, args, run))
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    base = min(seconds["none"])
    lines = [f"command: `python benchmarks/tracking_cost.py {' '.join(argv or sys.argv[1:])}`",
             f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
             f"{args.trials} simulated trials of quick.yaml, {args.drivers} drivers; wall s of `sweep run`",
             "", "| tracking | wall s per run | best | best vs none |", "| --- | --- | ---: | ---: |"]
    for mode in MODES:
        lines.append(f"| {mode} | {', '.join(f'{s:.1f}' for s in seconds[mode])} | {min(seconds[mode]):.1f} | "
                     f"{min(seconds[mode]) / base:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
