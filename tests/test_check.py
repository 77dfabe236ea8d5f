"""`sweep check` and `sweep run --dry-run`: the plan and ASHA's estimate, with no Ray started and nothing written;
and joining a cluster that has token authentication on (`ray start`, two nodes)."""
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from sweep.check import asha_estimate, bracket_rungs, check, describe, expected_epochs
from cli_calls import run_cli
from sweep.spec import load

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "configs" / "quick.yaml"

# Ray has token authentication (RAY_AUTH_MODE=token) from 2.52; an older Ray, as at the declared floor, ignores it.
needs_token_auth = pytest.mark.skipif(tuple(int(p) for p in version("ray").split(".")[:2]) < (2, 52),
                                      reason="Ray token authentication (RAY_AUTH_MODE=token) needs ray>=2.52")


@pytest.mark.parametrize("command", [["check"], ["run", "--dry-run"]], ids=["check", "run --dry-run"])
def test_check_prints_spec_plan_and_estimate_without_ray_or_writes(capsys, no_ray, command):
    import ray

    code, out, err = run_cli(capsys, command[0], QUICK, *command[1:])
    assert code == 0 and not err, err
    shown = yaml.safe_load(out)
    assert shown["sweep"]["name"] == "quick" and shown["sweep"]["num_samples"] == 12
    plan = shown["plan"]
    assert plan["cluster"] == {"CPU": float(len(os.sched_getaffinity(0))), "GPU": 0.0} and plan["execution"] == "trial"
    assert plan["cpu_per_trial"] == 1 and plan["threads_per_trial"] == 1
    assert plan["max_concurrent_trials"] == min(12, len(os.sched_getaffinity(0)))
    assert "this machine (Ray not started)" in out
    # quick.yaml: 4 epochs, grace 1, rf 2: everyone trains 1 epoch, half a 2nd, a quarter the 3rd and 4th.
    assert shown["estimate"]["rungs"] == [1, 2, 4] and shown["estimate"]["epochs_per_trial"] == 2.0
    assert shown["estimate"]["trial_epochs"] == 24.0 and shown["estimate"]["trial_epochs_without_asha"] == 48
    assert not ray.is_initialized()
    assert list(no_ray.iterdir()) == [], "a check writes nothing"


def test_check_and_dry_run_print_the_same(capsys, no_ray):
    checked = run_cli(capsys, "check", QUICK, "--set", "num_samples=5", "--name", "other")
    dry = run_cli(capsys, "run", QUICK, "--set", "num_samples=5", "--name", "other", "--dry-run")
    assert checked == dry and checked[0] == 0 and "name: other" in checked[1] and "num_samples: 5" in checked[1]


@pytest.mark.parametrize("command", [["check"], ["run", "--dry-run"]], ids=["check", "run --dry-run"])
def test_check_refuses_a_bad_key_in_one_line(capsys, no_ray, command):
    code, out, err = run_cli(capsys, command[0], QUICK, *command[1:], "--set", "train.epochz=2")
    assert code == 2 and not out and err.count("\n") == 1 and "did you mean 'train.epochs'" in err, err
    assert list(no_ray.iterdir()) == []


def test_a_taken_name_is_a_warning_not_an_error(capsys, no_ray):
    (no_ray / "results" / "quick").mkdir(parents=True)
    code, out, err = run_cli(capsys, "check", QUICK)
    assert code == 0 and "plan:" in out
    assert err.count("\n") == 1 and "sweep check: warning: sweep 'quick' already exists" in err and "--overwrite" in err
    code, _, err = run_cli(capsys, "run", QUICK, "--dry-run", "--overwrite")
    assert code == 0 and not err, "--overwrite: the name is no obstacle"
    assert os.listdir(no_ray / "results" / "quick") == []


def test_an_unwritable_results_folder_is_refused_as_run_refuses_it(capsys, no_ray):
    (no_ray / "results").write_text("a file where the results folder should be")
    code, _, err = run_cli(capsys, "check", QUICK)
    assert code == 2 and "is not writable" in err and err.count("\n") == 1


def test_check_plans_packed_execution_on_a_machine_with_a_gpu(monkeypatch, tmp_path, data_dir):
    import sweep.check

    monkeypatch.setattr(sweep.check, "local_resources", lambda: {"CPU": 8.0, "GPU": 2.0})
    report = check(load(QUICK, ("num_samples=600", f"storage_path={tmp_path}/results")))
    assert report.plan.execution == "packed" and report.plan.trainers == 2 and report.plan.pack_size == 256
    shown = yaml.safe_load(describe(report))["plan"]
    assert shown["trainers"] == 2 and shown["pack_size"] == 256 and shown["max_concurrent_trials"] == 512


def test_asha_estimate_by_hand_30_epochs_grace_1_rf_3():
    # Rungs 1, 3, 9, 27, then max_t 30: all trials train to epoch 1, a third on to 3, a ninth to 9, 1/27 to 27
    # and 1/81 to 30.
    assert bracket_rungs(1, 3, 30) == ((1, 3, 9, 27),)
    hand = 1 + (3 - 1) / 3 + (9 - 3) / 9 + (27 - 9) / 27 + (30 - 27) / 81
    assert expected_epochs((1, 3, 9, 27), 3, 30) == pytest.approx(hand) == pytest.approx(3.0370370)
    spec = load(QUICK, ("train.epochs=30", "scheduler.grace_period=1", "scheduler.reduction_factor=3",
                        "num_samples=100"))
    estimate = asha_estimate(spec)
    assert estimate.epochs_per_trial == pytest.approx(hand) and estimate.trial_epochs == pytest.approx(100 * hand)
    assert expected_epochs((1, 3, 9, 27), 3, 27) == pytest.approx(1 + 2 / 3 + 6 / 9 + 18 / 27), "no epochs past max_t"


def test_asha_brackets_match_rays_and_are_weighted_as_ray_draws_them():
    from ray.tune.schedulers import AsyncHyperBandScheduler

    for max_t, grace, rf, brackets in [(30, 1, 3, 3), (4, 1, 2, 2), (100, 2, 2.5, 4), (27, 1, 3, 1)]:
        ray_asha = AsyncHyperBandScheduler(time_attr="epoch", metric="val_loss", mode="min", max_t=max_t,
                                           grace_period=grace, reduction_factor=rf, brackets=brackets)
        theirs = tuple(tuple(sorted({min(max_t, math.ceil(m)) for m, _ in b._rungs})) for b in ray_asha._brackets)
        assert bracket_rungs(grace, rf, max_t, brackets) == theirs
    spec = load(QUICK, ("train.epochs=30", "scheduler.reduction_factor=3", "scheduler.brackets=2"))
    estimate = asha_estimate(spec)
    low, high = math.e ** 4, math.e ** 3  # Ray draws a bracket with weight e**(its number of rungs)
    per_bracket = (expected_epochs((1, 3, 9, 27), 3, 30), 3 + 6 / 3 + 18 / 9 + 3 / 27)
    assert estimate.epochs_per_trial == pytest.approx((low * per_bracket[0] + high * per_bracket[1]) / (low + high))


def test_join_error_names_the_token_fix_when_the_cluster_refuses_the_driver():
    from sweep.runner import join_error

    try:
        try:
            raise RuntimeError("Failed to connect to GCS. ray.exceptions.AuthenticationError: RPC error: "
                               "InvalidAuthToken: Authentication token is missing or incorrect.")
        except RuntimeError as cause:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from cause
    except ConnectionError as exc:
        message = str(join_error("10.0.0.1:6379", exc))
    assert "RAY_AUTH_MODE=token" in message and "RAY_AUTH_TOKEN" in message and "~/.ray/auth_token" in message
    plain = str(join_error("10.0.0.1:6379", ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")))
    assert "RAY_AUTH_MODE" not in plain and "check the address" in plain


def _env(**changes) -> dict:
    """The environment of a process on a cluster: no loopback-only switch (a driver that joins must not
    have it), no token but the ones given; this checkout's code first (pytest may run in a worktree)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
                        "RAY_AUTH_TOKEN_PATH")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.update(changes)
    return env


@needs_token_auth
def test_auth_mode_token_without_a_token_is_one_line_naming_the_fix(tmp_path, data_dir):
    """RAY_AUTH_MODE=token and no token anywhere (HOME has no ~/.ray/auth_token): Ray refuses before it
    connects, so no cluster is needed to see the message."""
    (tmp_path / "home").mkdir()
    proc = subprocess.run([sys.executable, "-m", "sweep.cli", "check", str(QUICK), "--address", "127.0.0.1:9"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env=_env(RAY_AUTH_MODE="token", HOME=str(tmp_path / "home")))
    assert proc.returncode == 2 and not proc.stdout, proc.stderr
    assert proc.stderr.count("\n") == 1 and "token authentication" in proc.stderr, proc.stderr
    assert "RAY_AUTH_MODE=token" in proc.stderr and "RAY_AUTH_TOKEN" in proc.stderr
    assert not (tmp_path / "results").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def token_cluster():
    """A head and a worker node of one CPU each, started by `ray start` as an operator would, with token
    authentication on. `--block` keeps each in the foreground, so stopping it (SIGTERM, then its process
    group) stops only this cluster's processes; `ray stop` would stop every Ray on the machine."""
    token = secrets.token_hex(16)
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live under it
    env = _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    ray = str(Path(sys.executable).with_name("ray"))
    nodes = []

    def start(*args):
        log = open(Path(temp) / f"node{len(nodes)}.log", "w")
        nodes.append(subprocess.Popen([ray, "start", "--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", *args],
                                      env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def wait_for(cpus):
        deadline = time.time() + 120
        while time.time() < deadline:
            status = subprocess.run([ray, "status", f"--address={address}"], env=env, capture_output=True, text=True)
            if f"0.0/{cpus}.0 CPU" in status.stdout:
                return
            assert all(n.poll() is None for n in nodes), (Path(temp) / "node0.log").read_text()[-2000:]
            time.sleep(1)
        pytest.fail(f"the cluster never reached {cpus} CPUs")

    try:
        start("--head", f"--port={port}", f"--temp-dir={temp}", "--include-dashboard=false")
        wait_for(1)
        start(f"--address={address}")
        wait_for(2)
        yield address, token
    finally:
        for node in reversed(nodes):
            node.send_signal(signal.SIGTERM)
        for node in reversed(nodes):
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(node.pid, signal.SIGKILL)  # whatever of this node outlived `ray start`
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
@needs_token_auth
def test_sweep_runs_on_a_ray_start_cluster_with_token_authentication(token_cluster, tmp_path, data_dir):
    address, token = token_cluster
    args = [sys.executable, "-m", "sweep.cli", "run", str(QUICK), "--set", "num_samples=2", "--set", "train.epochs=1",
            "--set", f"storage_path={tmp_path / 'results'}", "--address", address]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env=_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Ray: 2 CPUs, 0 GPUs" in proc.stdout and "done: 2 trials (2 completed)" in proc.stdout

    # A driver without RAY_AUTH_MODE=token is refused, and told what to set.
    proc = subprocess.run([*args[:3], "check", *args[4:]], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=_env())
    assert proc.returncode == 2 and not proc.stdout
    last = proc.stderr.splitlines()[-1]  # Ray's C++ client logs its retries to stderr before giving up
    assert last.startswith("sweep check: error: cannot join the Ray cluster") and "RAY_AUTH_MODE=token" in last, \
        proc.stderr[-2000:]
