"""What limits a sweep as it grows: the searcher, the Tune driver, checkpoint storage, and nodes.

    python benchmarks/scaling.py            # writes benchmarks/out/scaling.md

1. Searcher: seconds per TPE suggestion, and per trial's epoch reports and end, as the study grows
   (sweep.searcher.StudySearch on the study's journal file, beside the SQLite study of older sweeps).
2. Driver: results per second the Tune driver absorbs (our searcher, ASHA, progress view, Ray's
   loggers), with trials that do no training, with and without a checkpoint per result of the size
   a vanilla latent-32 trial writes (model + Adam state); with the sweep's TensorBoard logs
   (sweep.tblogs) and with Ray's default ones, which fsync after every result.
3. Nodes: the reference sweep (trial execution) on a local Ray cluster of 1, 2 and 3 one-CPU nodes
   (ray.cluster_utils.Cluster). Nodes on one machine share its cores: past the core count this
   measures coordination, not capacity.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # its local Ray on 127.0.0.1, as `sweep run`'s
CHECKPOINT_BYTES = 13_000_000  # TrainState of vanilla latent 32: weights + Adam moments, float32


def searcher_rate(sizes: list[int], store: str = "journal") -> list[dict]:
    import math

    from sweep.searcher import StudySearch
    from sweep.space import SearchSpace
    from sweep.spec import parse

    spec = parse({"name": "bench", "train": {"epochs": 10},
                  "space": {"variant": {"choice": ["vanilla", "denoising", "sparse", "conv"]},
                            "latent_dim": {"choice": [2, 8, 16, 32, 64]}, "lr": {"loguniform": [1e-4, 1e-2]},
                            "noise_factor": {"uniform": [0.1, 0.7]},
                            "sparsity_weight": {"loguniform": [1e-5, 1e-2]}}})
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/study.db" if store == "sqlite" else f"{folder}/study.journal"
        search = StudySearch(SearchSpace(spec.space), spec.searcher, url, "bench", 10)
        done = 0
        for size in sorted(sizes):
            times, tells = [], []
            while done < size:
                tick = time.perf_counter()
                config = search.suggest(f"t{done}")
                times.append(time.perf_counter() - tick)
                value = 0.02 + 0.01 * abs(math.log10(config["lr"]) + 2.5) + 0.05 / config["latent_dim"]
                tick = time.perf_counter()
                for epoch in (1, 2, 3):
                    search.on_trial_result(f"t{done}", {"val_loss": value + 0.01 / epoch, "epoch": epoch})
                search.on_trial_complete(f"t{done}", {"val_loss": value, "epoch": 3 if done % 3 else 10})
                tells.append(time.perf_counter() - tick)
                done += 1
            recent, told = times[-20:], tells[-20:]
            rows.append({"study": store, "trials in study": size, "s per suggestion": sum(recent) / len(recent),
                         "suggestions per s": len(recent) / sum(recent),
                         "s per trial's 3 reports + end": sum(told) / len(told)})
    return rows


def _dummy_trial(config, *, reports, checkpoint_bytes):
    """A trial that does no training: it reports (and checkpoints) as fast as the driver lets it."""
    import tempfile as tf

    from ray import tune
    from ray.tune import Checkpoint

    with tf.TemporaryDirectory() as folder:
        if checkpoint_bytes:
            Path(folder, "state.pt").write_bytes(os.urandom(1024) * (checkpoint_bytes // 1024))
        for epoch in range(1, reports + 1):
            checkpoint = Checkpoint.from_directory(folder) if checkpoint_bytes else None
            tune.report({"val_loss": config["lr"] + 1.0 / epoch, "epoch": epoch, "status": "running"},
                        checkpoint=checkpoint)


def driver_rate(trials: int, reports: int, checkpoint_bytes: int, tensorboard: str = "aesweep") -> dict:
    """`tensorboard`: "aesweep" (sweep.tblogs, what a sweep uses) or "ray" (Ray's default, an fsync per result)."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from sweep.progress import Progress
    from sweep.searcher import StudySearch
    from sweep.space import SearchSpace
    from sweep.spec import parse
    from sweep.tblogs import TensorBoardLogs

    spec = parse({"name": "driver", "train": {"epochs": reports},
                  "space": {"latent_dim": {"choice": [2, 8]}, "lr": {"loguniform": [1e-4, 1e-2]}}})
    with tempfile.TemporaryDirectory() as folder:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False,
                 _node_ip_address="127.0.0.1")
        try:
            fn = tune.with_parameters(_dummy_trial, reports=reports, checkpoint_bytes=checkpoint_bytes)
            concurrent = max(2, 4 * os.cpu_count())
            tuner = tune.Tuner(
                tune.with_resources(fn, {"cpu": os.cpu_count() / concurrent}),
                tune_config=tune.TuneConfig(
                    search_alg=StudySearch(SearchSpace(spec.space), spec.searcher, f"{folder}/study.journal",
                                           "driver", reports),
                    scheduler=ASHAScheduler(time_attr="epoch", metric="val_loss", mode="min", max_t=reports,
                                            grace_period=reports),
                    num_samples=trials, max_concurrent_trials=concurrent, reuse_actors=True),
                run_config=tune.RunConfig(name="ray", storage_path=folder, verbose=0,
                                          callbacks=[Progress(trials, reports, interval_s=1e9)]
                                          + ([TensorBoardLogs()] if tensorboard == "aesweep" else []),
                                          checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
            tick, cpu = time.perf_counter(), time.process_time()
            tuner.fit()
            wall, cpu = time.perf_counter() - tick, time.process_time() - cpu
        finally:
            ray.shutdown()
    results = trials * reports
    return {"TensorBoard logs": tensorboard, "trials": trials, "results": results,
            "checkpoint MB": checkpoint_bytes / 1e6, "wall s": wall,
            "results per s": results / wall, "driver CPU ms per result": 1000 * cpu / results,
            "checkpoint MB/s": results * checkpoint_bytes / 1e6 / wall}


def node_scaling(nodes: int, data_dir: str) -> dict:
    import subprocess

    import pandas as pd
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1)
    try:
        with tempfile.TemporaryDirectory() as folder:
            tick = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "sweep.cli", "run", str(REPO / "configs" / "quick.yaml"), "--address",
                 cluster.address, "--set", f"storage_path={folder}", "--set", "num_samples=16",
                 "--set", "train.epochs=3", "--set", "train.train_subset=2000", "--set", "space.variant=vanilla",
                 "--set", "space.noise_factor=null", "--set", "space.sparsity_weight=null"],
                capture_output=True, text=True, env={**os.environ, "AEMODELS_DATA_DIR": data_dir}, cwd=REPO)
            wall = time.perf_counter() - tick
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            trials = pd.read_parquet(Path(folder) / "quick" / "trials.parquet")
    finally:
        cluster.shutdown()
    epochs = int(trials["epochs"].sum())
    return {"nodes": nodes, "CPUs": nodes, "wall s (incl. driver start)": wall, "trial-epochs": epochs,
            "trial-epochs per min": 60 * epochs / wall, "nodes that ran trials": trials["node_id"].nunique()}


def table(rows: list[dict]) -> list[str]:
    keys = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)] + \
        ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200,500", help="study sizes at which to time TPE suggestions")
    parser.add_argument("--nodes", default="1,2,3")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: searcher, driver, nodes")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "scaling.md"))
    args = parser.parse_args(argv)
    from aemodels import ensure_dataset

    skip = set(filter(None, args.skip.split(",")))
    lines = [f"# Scaling ({datetime.date.today()})", "",
             f"- machine: {platform.machine()}, {os.cpu_count()} cores; command: "
             f"`python benchmarks/scaling.py {' '.join(sys.argv[1:])}`".rstrip(), ""]
    if "searcher" not in skip:
        sizes = [int(s) for s in args.sizes.split(",")]
        lines += ["## TPE suggestions (multivariate, constant liar): the journal, and the SQLite study of older sweeps",
                  ""]
        lines += table(searcher_rate(sizes, "journal") + searcher_rate(sizes, "sqlite")) + [""]
    if "driver" not in skip:
        lines += ["## Tune driver: results absorbed per second (trials that do not train)", ""]
        lines += table([driver_rate(32, 10, size, logs)
                        for size in (0, CHECKPOINT_BYTES) for logs in ("aesweep", "ray")])
        lines += [""]
    if "nodes" not in skip:
        data_dir = str(ensure_dataset("mnist"))
        lines += ["## Nodes of a local Ray cluster (one CPU each, same machine)", ""]
        lines += table([node_scaling(int(n), data_dir) for n in args.nodes.split(",")]) + [""]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
