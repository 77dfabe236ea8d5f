"""The local Ray a sweep starts: its worker processes import the trial code (and torch, when each will
train a trial) before they take work, and Tune's trial actors start on them instead of on fresh processes."""
import os
import sys
import time

import pytest

from sweep import runner, spec


def reference(**changes) -> spec.SweepSpec:
    values = {"name": "w", "space": {"variant": "vanilla", "latent_dim": {"choice": [2, 8]},
                                     "lr": {"loguniform": [1e-4, 1e-2]}},
              "train": {"epochs": 2, "device": "cpu"}, "num_samples": 32, "resources": {"cpu": 1}}
    for key, value in changes.items():
        values[key] = {**values[key], **value} if isinstance(value, dict) else value
    return spec.parse(values)


@pytest.fixture
def four_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)


def test_torch_is_preloaded_only_when_every_worker_trains_a_trial(four_cpus):
    with_torch = runner.TRIAL_CODE + runner.TORCH
    assert runner.preload_modules(reference()) == with_torch  # 32 one-CPU trials on 4 CPUs
    assert runner.preload_modules(reference(num_samples=3)) == runner.TRIAL_CODE  # one worker would idle
    assert runner.preload_modules(reference(resources={"cpu": 2})) == runner.TRIAL_CODE  # two would
    assert runner.preload_modules(reference(max_concurrent_trials=2)) == runner.TRIAL_CODE
    assert runner.preload_modules(reference(resources={"execution": "packed"})) == runner.TRIAL_CODE  # proxies
    assert runner.preload_modules(reference(resources={"cpu": 8})) == runner.TRIAL_CODE  # plan() will say why


def started_with(monkeypatch, **environ) -> dict:
    """The _system_config `runner.connect` starts a local Ray with (ray.init replaced)."""
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for name in ("RAY_preload_python_modules", "RAY_enable_worker_prestart"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert runner.connect(None, False, reference())
    return calls[0]["_system_config"]


def test_a_local_rays_workers_start_with_the_raylet_and_preload_unless_ray_variables_say(four_cpus, monkeypatch):
    assert started_with(monkeypatch) == {"preload_python_modules": list(runner.TRIAL_CODE + runner.TORCH),
                                         "enable_worker_prestart": True}
    assert started_with(monkeypatch, RAY_enable_worker_prestart="0") == {
        "preload_python_modules": list(runner.TRIAL_CODE + runner.TORCH)}
    assert started_with(monkeypatch, RAY_preload_python_modules="json") == {"enable_worker_prestart": True}


# ---- with a local Ray ----------------------------------------------------------------------------------

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
    import ray

    many_trials = reference(num_samples=4096)  # a trial for every worker, on any machine
    assert runner.preload_modules(many_trials) == runner.TRIAL_CODE + runner.TORCH
    assert runner.connect(None, False, many_trials)
    deadline = time.monotonic() + 60
    while len(idle_workers()) < int(ray.cluster_resources()["CPU"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    yield idle_workers()
    ray.shutdown()


def where_a_trial_runs(tmp_path, name: str) -> dict:
    from ray import tune

    def report_where(config):  # the first thing the trial does: nothing of its own is imported yet
        modules = runner.TRIAL_CODE + runner.TORCH
        tune.report({"pid": os.getpid(), "preloaded": sorted(m for m in modules if m in sys.modules)})

    results = tune.Tuner(tune.with_resources(report_where, {"cpu": 1}),
                         run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0)).fit()
    assert not results.errors
    return results[0].metrics


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds Ray's idle workers in /proc")


@pytest.mark.slow
@linux_only
def test_a_trial_starts_on_a_worker_ray_already_started_with_torch_imported(local_ray, tmp_path):
    with runner.idle_workers_for_trials():
        where = where_a_trial_runs(tmp_path, "reused")

    assert where["pid"] in local_ray
    assert where["preloaded"] == sorted(runner.TRIAL_CODE + runner.TORCH)


@pytest.mark.slow
@linux_only
def test_tunes_own_runtime_env_would_start_a_fresh_worker_and_is_restored(local_ray, tmp_path):
    from ray.tune.execution.class_cache import DEFAULT_ENV_VARS

    before = dict(DEFAULT_ENV_VARS)
    where = where_a_trial_runs(tmp_path, "fresh")

    assert where["pid"] not in local_ray  # what idle_workers_for_trials avoids
    assert where["preloaded"] == sorted(runner.TRIAL_CODE + runner.TORCH)  # fresh workers preload too
    with runner.idle_workers_for_trials():
        assert "PL_DISABLE_FORK" not in DEFAULT_ENV_VARS
    assert DEFAULT_ENV_VARS == before


def test_declared_gpus_pack_one_trainer_per_gpu_and_device_cpu_opts_out():
    # A cluster that declares GPUs (`ray start --num-gpus`), whatever is behind them: execution auto packs.
    sweep = reference(train={"device": "auto"}, num_samples=8)
    packed = runner.plan(sweep, {"CPU": 2.0, "GPU": 4.0})
    assert (packed.execution, packed.trainers, packed.max_concurrent) == ("packed", 4, 8)
    assert packed.cpu_per_trial == 0.25 and packed.gpu_per_trial == 0.0  # trainers hold the GPUs, proxies share CPUs
    assert runner.plan(reference(train={"device": "cpu"}), {"CPU": 2.0, "GPU": 4.0}).execution == "trial"


@pytest.mark.parametrize("cpus, gpus, samples", [(2.0, 1.0, 3), (2.0, 4.0, 12), (96.0, 8.0, 5000), (7.0, 3.0, 700)])
def test_every_planned_proxy_fits_in_the_clusters_cpus(cpus, gpus, samples):
    # Ray counts resources in steps of 0.0001: a share rounded up (2 / 3 -> 0.6667) fits one proxy fewer.
    packed = runner.plan(reference(train={"device": "auto"}, num_samples=samples), {"CPU": cpus, "GPU": gpus})
    steps = round(packed.cpu_per_trial * 10_000)
    assert steps == packed.cpu_per_trial * 10_000 and steps * packed.max_concurrent <= cpus * 10_000


def test_a_wave_of_trials_that_all_see_equal_loads_is_spread_over_every_trainer(monkeypatch):
    from sweep import packed

    class Trainer:
        def __init__(self, load):
            self.load = type("Method", (), {"remote": staticmethod(lambda: load)})

    names = [f"t{i}" for i in range(4)]
    monkeypatch.setattr(packed, "_handles", {n: Trainer(0) for n in names})
    monkeypatch.setattr(packed.ray, "get", lambda refs: refs)  # the fake handles answer at once
    chosen = [packed._trainer(names, f"5c1e2_{i:05d}") for i in range(8)]
    assert [packed._handles[n] for n in names] * 2 == chosen, "round robin over equally loaded trainers"

    packed._handles.update({"t0": Trainer(3), "t1": Trainer(1), "t2": Trainer(1), "t3": Trainer(2)})
    assert {id(packed._trainer(names, f"x_{i:05d}")) for i in range(4)} == {id(packed._handles["t1"]),
                                                                            id(packed._handles["t2"])}
    assert packed._trial_number("not-numbered") == packed._trial_number("not-numbered")


@pytest.mark.parametrize("concurrent", [1, 2, 3, 7, 256, 2048, 31_000])
def test_exactly_a_drivers_trials_at_once_fit_in_its_pool(concurrent):
    from sweep.plan import POOL_UNITS, driver_slot

    (units,) = driver_slot(1, concurrent).values()
    assert units == int(units) and POOL_UNITS // units == concurrent  # whole units: Ray's 0.0001 steps lose none


@pytest.mark.slow
def test_a_driver_of_a_packed_sweep_places_no_more_trials_than_its_share(tmp_path):
    """Two drivers share the proxies' CPU shares: a spare trial of one (waiting for a proxy another trial
    leaves) must not take a share the other driver's trials need, or every trial start costs a process."""
    import ray

    sweep = reference(drivers=2, num_samples=4, resources={"execution": "packed"})
    assert runner.connect(None, False, sweep)
    try:
        plan = runner.plan(sweep)
        assert plan.max_concurrent == 4

        @ray.remote
        class Proxy:
            def ready(self):
                return True

        def proxies(driver: int, n: int) -> list:
            slot = runner.proxy_slot(sweep, plan, driver)
            assert slot  # the pools are declared by the Ray the sweep started
            return [Proxy.options(num_cpus=plan.cpu_per_trial, resources=slot).remote() for _ in range(n)]

        # Driver 0's two trials at once, then a spare. (Created together, Ray could place the spare first.)
        first = proxies(0, 2)
        assert len(ray.wait([p.ready.remote() for p in first], num_returns=2, timeout=90)[0]) == 2
        spare_proxy = proxies(0, 1)
        spare = spare_proxy[0].ready.remote()
        # Driver 1's trials start: the spare took none of their shares. (Held: an actor ends, and frees
        # its share, once its handles are gone.)
        second = proxies(1, 2)
        assert len(ray.wait([p.ready.remote() for p in second], num_returns=2, timeout=90)[0]) == 2
        assert not ray.wait([spare], timeout=1)[0]
        ray.kill(first[0])  # a proxy driver 0 no longer needs: its spare takes the share
        assert ray.wait([spare], timeout=90)[0]
    finally:
        ray.shutdown()
