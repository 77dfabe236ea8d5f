"""Sweeps on a real multi-node Ray cluster started on this machine (ray.cluster_utils.Cluster)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def two_gpu_nodes():
    """Two nodes of one CPU each that declare two GPUs each: no CUDA behind them, so training runs on the CPU,
    while Ray schedules the sweep exactly as on a cluster of four GPUs (the packed plan, trainers by GPU)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 2})
    cluster.add_node(num_cpus=1, num_gpus=2)
    yield cluster
    cluster.shutdown()


def test_packed_sweep_on_declared_gpus_spreads_members_over_a_trainer_per_gpu_and_survives_losing_one(
        two_gpu_nodes, tmp_path, data_dir):
    """The GPU orchestration of issue 19, through the CLI on CPU training: `execution: auto` packs because
    the cluster has GPUs, one trainer per GPU (two per node, each on its own GPU), members spread over all
    four, and a trainer SIGKILLed mid-sweep loses nothing (its members rejoin the restarted trainer, or
    another, from their checkpoints)."""
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "sweep.cli", "run", "configs/quick.yaml", "--address", two_gpu_nodes.address,
         "--set", f"storage_path={tmp_path}", "--set", "num_samples=8", "--set", "train.epochs=3",
         "--set", "train.train_subset=2000", "--set", "scheduler.grace_period=2",
         "--set", "scheduler.report=epoch"],  # a report every epoch tells when a trial is mid-epoch 2
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    home = tmp_path / "quick"
    killed, deadline = None, time.time() + 300
    # Kill the trainer of a trial surely mid-epoch: a fresh report (younger than 0.8 epochs) of epoch 1,
    # where ASHA (grace 2) cannot stop it, read from the checkpoints' history.json (written inside the
    # report; Ray's result.json comes later). Only this test's cluster's processes are candidates.
    while killed is None and time.time() < deadline and proc.poll() is None:
        ours = _descendants_titled(os.getpid(), "PackTrainer")
        for r in _newest_reports(home):
            if r["status"] == "running" and r["epoch"] == 1 and time.time() - r["timestamp"] < 0.8 * r["epoch_s"] \
                    and r["trainer_pid"] in ours:
                os.kill(r["trainer_pid"], signal.SIGKILL)
                killed = r["trainer"]
                break
        time.sleep(0.05)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert killed, "the sweep ended before a trainer could be killed mid-sweep"
    assert "packed execution: 4 trainer(s)" in out and "Ray: 2 CPUs, 4 GPUs" in out

    trials = pd.read_parquet(home / "trials.parquet")
    assert len(trials) == 8 and trials["trial_id"].is_unique
    assert set(trials["status"]) <= {"completed", "stopped"}, trials[["trial_id", "status", "error"]]
    assert set(trials["execution"]) == {"packed"} and set(trials["device"]) == {"cpu"}, "no CUDA: CPU training"
    nodes = {node.node_id for node in two_gpu_nodes.list_all_nodes()}
    assert set(trials["node_id"]) == nodes, "trial proxies ran on both nodes"
    assert trials["num_failures"].sum() >= 1, "the killed trainer's members were retried"
    epochs = pd.read_parquet(home / "epochs.parquet")
    assert len(epochs) == trials["epochs"].sum() and not epochs.duplicated(["trial_id", "epoch"]).any()
    assert set(epochs.groupby("trial_id")["epoch"].max()) <= {2, 3}

    trainers = json.loads((home / "trainers.json").read_text())
    assert len(trainers) == 4, "one trainer per declared GPU"
    by_node = {}
    for t in trainers:
        by_node.setdefault(t["node_id"], []).append(tuple(t["gpu_ids"]))
    assert set(by_node) == nodes and all(len(set(g)) == 2 and all(len(i) == 1 for i in g) for g in by_node.values()), \
        f"two trainers per node, each on its own GPU: {by_node}"
    used = {r["trainer"] for rs in _result_rows(home).values() for r in rs}
    assert used == {t["name"] for t in trainers}, f"members spread over every trainer: {used}"


@pytest.fixture
def three_nodes():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    yield cluster, workers
    cluster.shutdown()


def test_losing_a_worker_node_mid_sweep_loses_no_trial(three_nodes, tmp_path, data_dir):
    import time

    cluster, workers = three_nodes
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweep.cli", "run", "configs/quick.yaml", "--address", cluster.address,
         "--set", f"storage_path={tmp_path}", "--set", "num_samples=8", "--set", "train.epochs=4",
         "--set", "train.train_subset=3000", "--set", "scheduler.grace_period=2",
         "--set", "scheduler.report=epoch"],  # the reports of epochs 1 and 3 tell when a trial is mid-epoch
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = workers[0]
    deadline = time.time() + 300
    # Wait until the victim node is surely mid-trial: a fresh report (younger than 0.8 epochs) of an
    # epoch ASHA cannot stop at (rungs: 2, 4). A node lost while its reused worker starts the next
    # trial fails that trial for good: Ray Tune retries only RUNNING trials (RELIABILITY.md).
    # Reports are read from the checkpoints' history.json, which the worker writes inside its report:
    # Ray's result.json is written by the driver 0.7-2.5 s later here, often too late to be fresh.
    fresh = False
    while not fresh and time.time() < deadline and proc.poll() is None:
        fresh = any(r["node_id"] == victim.node_id and r["status"] == "running" and r["epoch"] in (1, 3)
                    and time.time() - r["timestamp"] < 0.8 * r["epoch_s"] for r in _newest_reports(tmp_path / "quick"))
        time.sleep(0.05)
    cluster.remove_node(victim)
    assert fresh, "the sweep ended before the victim node was seen mid-trial"
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    trials = pd.read_parquet(tmp_path / "quick" / "trials.parquet")
    assert len(trials) == 8 and trials["trial_id"].is_unique
    assert set(trials["status"]) <= {"completed", "stopped"}, trials[["trial_id", "status", "error"]]
    assert victim.node_id in set(trials["node_id"]) or trials["num_failures"].sum() >= 1
    assert trials["num_failures"].sum() >= 1, "a trial on the lost node was retried elsewhere"
    epochs = pd.read_parquet(tmp_path / "quick" / "epochs.parquet")
    assert len(epochs) == trials["epochs"].sum() and not epochs.duplicated(["trial_id", "epoch"]).any()


@pytest.fixture
def s3(tmp_path):
    """An S3-compatible server (moto) on loopback, with one bucket; yields the environment to reach it."""
    import os
    import socket
    import time

    boto3 = pytest.importorskip("boto3")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    client = None
    for _ in range(100):
        try:
            client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                                  aws_access_key_id="testing", aws_secret_access_key="testing")
            client.create_bucket(Bucket="aesweep-test")
            break
        except Exception:
            time.sleep(0.1)
    yield env, client
    server.kill()


def _keys(client, prefix):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="aesweep-test", Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_s3_storage_holds_checkpoints_and_results_and_resumes_from_the_uri_alone(s3, tmp_path, data_dir):
    import os
    import shutil
    import signal
    import time

    env, client = s3
    config = str(Path("configs/quick.yaml").resolve())
    uri = "s3://aesweep-test/sweeps"
    driver = tmp_path / "driver-a"
    driver.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweep.cli", "run", config, "--set", f"storage_path={uri}", "--set", "num_samples=6",
         "--set", "train.epochs=3", "--set", "train.train_subset=1500"],
        cwd=driver, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len([k for k in _keys(client, "sweeps/quick/ray/") if k.endswith("state.pt")]) >= 4 and \
                _ended_in_store(client, "sweeps/quick/ray/"):
            break
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver's machine is gone ...
    proc.wait()
    shutil.rmtree(driver)  # ... with its local folder
    # Ray uploads its snapshot's files in no set order: killed mid-upload, its copy of the study in the store
    # can be older than its experiment state there, which lists trials as ended that this copy lacks.
    snapshot = "sweeps/quick/ray/study-snapshot.journal"
    first_line = client.get_object(Bucket="aesweep-test", Key=snapshot)["Body"].read().split(b"\n")[0] + b"\n"
    client.put_object(Bucket="aesweep-test", Key=snapshot, Body=first_line)
    other = tmp_path / "driver-b"
    other.mkdir()
    status = _status(f"{uri}/quick", other, env)  # the driver's copy in the bucket: it died running
    assert status["state"] == "stopped" and "ended without finishing" in status["why"], status
    done = subprocess.run([sys.executable, "-m", "sweep.cli", "resume", f"{uri}/quick"], cwd=other, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    keys = _keys(client, "sweeps/quick/")
    for name in ("sweep.yaml", "study.journal", "trials.parquet", "trials.csv", "epochs.parquet", "best_config.yaml"):
        assert f"sweeps/quick/{name}" in keys
    assert any(k.endswith("/checkpoint_000000/state.pt") for k in keys)
    body = client.get_object(Bucket="aesweep-test", Key="sweeps/quick/trials.parquet")["Body"].read()
    (tmp_path / "t.parquet").write_bytes(body)
    trials = pd.read_parquet(tmp_path / "t.parquet")
    assert len(trials) == 6 and trials["trial_id"].is_unique and set(trials["status"]) <= {"completed", "stopped"}
    epochs = pd.read_parquet(other / "results" / "quick" / "epochs.parquet")
    assert len(epochs) == trials["epochs"].sum() and not epochs.duplicated(["trial_id", "epoch"]).any()
    assert not list((other / "results" / "quick").glob(".*.store"))  # the store's study copy, once compared
    assert "sweeps/quick/status.json" in keys
    elsewhere = tmp_path / "reader"
    elsewhere.mkdir()
    status = _status(f"{uri}/quick", elsewhere, env)
    assert status["state"] == "finished" and status["done"] == 6 and status["epochs"] == len(epochs), status


def _ended_in_store(client, prefix: str) -> int:
    """The trials that Ray's experiment state in the store lists as ended."""
    states = sorted(k for k in _keys(client, prefix) if "/experiment_state-" in k)
    try:
        state = json.loads(client.get_object(Bucket="aesweep-test", Key=states[-1])["Body"].read())
        return sum(json.loads(trial)["status"] in ("TERMINATED", "ERROR") for trial, _ in state["trial_data"])
    except Exception:  # none yet, or one replaced while read
        return 0


def _status(uri: str, cwd: Path, env: dict) -> dict:
    done = subprocess.run([sys.executable, "-m", "sweep.cli", "status", uri, "--json"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def _newest_reports(home: Path) -> list[dict]:
    """Each trial's last reported row, from its newest checkpoint (one being copied right now is skipped)."""
    rows = []
    for trial in (home / "ray").glob("*/"):
        checkpoints = sorted(trial.glob("checkpoint_*"))
        try:
            rows.append(json.loads((checkpoints[-1] / "history.json").read_text())[-1])
        except (IndexError, OSError, ValueError):
            continue
    return rows


def _result_rows(home: Path) -> dict[str, list[dict]]:
    """Every trial's rows as the driver has them (Ray's result.json), by trial."""
    rows = {}
    for path in (home / "ray").glob("*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]
        if lines:
            rows[lines[0]["trial_id"]] = lines
    return rows


def _descendants_titled(root: int, fragment: str) -> list[int]:
    """Processes below `root` whose command line holds `fragment`: this test's own, never another's."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue

    def below(pid):
        while pid in parents and pid != root:
            pid = parents[pid]
        return pid == root

    found = []
    for pid in parents:
        try:
            cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if fragment in cmdline and pid != root and below(pid):
            found.append(pid)
    return found

