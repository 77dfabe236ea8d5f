"""Sweeps on a real multi-node Ray cluster started on this machine (ray.cluster_utils.Cluster)."""
import subprocess
import sys

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def two_nodes():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    yield cluster
    cluster.shutdown()


def test_sweep_with_address_runs_trials_on_both_nodes(two_nodes, tmp_path, data_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "sweep.cli", "run", "configs/quick.yaml", "--address", two_nodes.address,
         "--set", f"storage_path={tmp_path}", "--set", "num_samples=6", "--set", "train.epochs=2",
         "--set", "train.train_subset=2000"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    trials = pd.read_parquet(tmp_path / "quick" / "trials.parquet")
    assert len(trials) == 6 and trials["trial_id"].is_unique
    assert set(trials["status"]) <= {"completed", "stopped"}
    nodes = {node.node_id for node in two_nodes.list_all_nodes()}
    assert set(trials["node_id"]) == nodes, "every node ran trials"
    epochs = pd.read_parquet(tmp_path / "quick" / "epochs.parquet")
    assert len(epochs) == trials["epochs"].sum()
