"""The local Ray a sweep starts: its worker processes import torch before they take work, and Tune's
trial actors start on them instead of waiting for fresh processes (BENCHMARKS.md: ~2 s per worker)."""
import os
import sys
import time

import pytest
import ray
from ray import tune

from sweep import runner

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds Ray's idle workers in /proc")]


def idle_workers() -> set[int]:
    """Ray's worker processes that have started and wait for work (Ray titles them ray::IDLE)."""
    pids = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if fh.read().startswith(b"ray::IDLE"):
                    pids.add(int(entry))
        except (OSError, ValueError):
            continue
    return pids


@pytest.fixture
def local_ray():
    assert runner.connect(None, False)
    deadline = time.monotonic() + 60
    while len(idle_workers()) < int(ray.cluster_resources()["CPU"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    yield idle_workers()
    ray.shutdown()


def where_a_trial_runs(tmp_path, name: str) -> dict:
    def report_where(config):  # the first thing the trial does: nothing of its own is imported yet
        tune.report({"pid": os.getpid(), "preloaded": sorted(m for m in runner.PRELOAD_MODULES if m in sys.modules)})

    results = tune.Tuner(tune.with_resources(report_where, {"cpu": 1}),
                         run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0)).fit()
    assert not results.errors
    return results[0].metrics


def test_a_trial_starts_on_a_worker_ray_already_started_with_torch_imported(local_ray, tmp_path):
    with runner.idle_workers_for_trials():
        where = where_a_trial_runs(tmp_path, "reused")

    assert where["pid"] in local_ray
    assert where["preloaded"] == sorted(runner.PRELOAD_MODULES)


def test_tunes_own_runtime_env_would_start_a_fresh_worker_and_is_restored(local_ray, tmp_path):
    from ray.tune.execution.class_cache import DEFAULT_ENV_VARS

    before = dict(DEFAULT_ENV_VARS)
    where = where_a_trial_runs(tmp_path, "fresh")

    assert where["pid"] not in local_ray  # what idle_workers_for_trials avoids
    assert where["preloaded"] == sorted(runner.PRELOAD_MODULES)  # fresh workers preload too, before taking work
    with runner.idle_workers_for_trials():
        assert "PL_DISABLE_FORK" not in DEFAULT_ENV_VARS
    assert DEFAULT_ENV_VARS == before
