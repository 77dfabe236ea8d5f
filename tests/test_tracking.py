"""Tracking servers (`tracking:` in a sweep file, sweep/tracking.py): the block checked like the rest of the
file; a missing package or a server that does not answer refused in one line before anything starts; and
one sweep logged to a real MLflow server (SQLite store, on 127.0.0.1) and to W&B offline run files."""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import pytest

from cli_calls import assert_refused, run_cli
from sweep.spec import SpecError, load, parse
from sweep.epochs import CARRIED

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "configs" / "quick.yaml"
SIMULATED = ("--set", "simulate.seconds_per_epoch=0")


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- the sweep file ------------------------------------------------------------------------------

def test_tracking_block_round_trips_through_the_resolved_spec():
    spec = load(QUICK, ("tracking.mlflow.uri=http://127.0.0.1:5000", "tracking.wandb.mode=offline"))
    assert spec.tracking.mlflow.uri == "http://127.0.0.1:5000" and spec.tracking.mlflow.experiment is None
    assert (spec.tracking.wandb.mode, spec.tracking.wandb.project) == ("offline", None)
    assert parse(spec.to_dict()).tracking == spec.tracking
    assert load(QUICK).to_dict()["tracking"] == {}


@pytest.mark.parametrize("override, message", [
    ("tracking.mlflow.url=http://x", "unknown key 'tracking.mlflow.url' (did you mean 'tracking.mlflow.uri'?"),
    ("tracking.mlfow.uri=http://x", "did you mean 'tracking.mlflow'?"),
    ("tracking.mlflow.experiment=x", "tracking.mlflow needs a uri"),
    ("tracking.wandb.mode=ofline", "unknown tracking.wandb.mode 'ofline' (did you mean 'offline'?"),
    ("tracking.wandb.project=''", "tracking.wandb.project must be a non-empty string"),
])
def test_a_bad_tracking_block_is_one_line_naming_the_key(override, message):
    with pytest.raises(SpecError, match=".*") as caught:
        load(QUICK, (override,))
    assert message in str(caught.value) and "\n" not in str(caught.value)


# ---- refused before the sweep starts ---------------------------------------------------------------

@pytest.mark.parametrize("package, setting", [("mlflow", "tracking.mlflow.uri=http://127.0.0.1:5000"),
                                              ("wandb", "tracking.wandb.mode=offline")])
@pytest.mark.parametrize("command", [["run"], ["check"]])
def test_a_missing_package_is_one_line_naming_the_extra(capsys, monkeypatch, no_ray, package, setting, command):
    monkeypatch.setitem(sys.modules, package, None)  # `import mlflow` raises ImportError, as when not installed
    assert_refused(capsys, no_ray, *command, QUICK, "--set", setting, *SIMULATED,
                   message=f"tracking.{package} needs the {package} package, which is not installed; "
                           f"pip install -e '.[{package}]'")


@pytest.mark.parametrize("command", [["run"], ["run", "--dry-run"]])
def test_an_unreachable_mlflow_server_is_one_line_before_ray_starts(capsys, no_ray, command):
    pytest.importorskip("mlflow")
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    assert_refused(capsys, no_ray, *command, QUICK, "--set", f"tracking.mlflow.uri={uri}", *SIMULATED,
                   message=f"the MLflow tracking server (tracking.mlflow.uri) cannot be reached at {uri}/health")
    assert time.monotonic() - started < 30, "a refused connection must not be retried for minutes"


def test_an_unreachable_wandb_server_is_one_line_in_online_mode(capsys, monkeypatch, no_ray):
    pytest.importorskip("wandb")
    base = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("WANDB_BASE_URL", base)
    assert_refused(capsys, no_ray, "run", QUICK, "--set", "tracking.wandb.mode=online", *SIMULATED,
                   message=f"the W&B server cannot be reached at {base}")


def test_a_server_that_fails_mid_sweep_is_a_warning_not_a_crash(monkeypatch, capsys):
    pytest.importorskip("mlflow")
    from sweep.tracking import MlflowRuns

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    spec = load(QUICK, (f"tracking.mlflow.uri=http://127.0.0.1:{free_port()}",))
    runs = MlflowRuns(spec)
    runs.setup()
    trial = types.SimpleNamespace(trial_id="t1", config={"variant": "vanilla", "latent_dim": 4, "lr": 1e-3},
                                  last_result={})
    runs.log_trial_start(trial)
    runs.log_trial_result(1, trial, {"epoch": 2, "val_loss": 0.1, CARRIED: [{"epoch": 1, "val_loss": 0.2}]})
    runs.log_trial_end(trial)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: MLflow")]
    assert len(warnings) == 1, "one warning, then quiet until the server is tried again"


# ---- one sweep, logged to both -------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with a SQLite store and a temporary artifact folder; its URI."""
    pytest.importorskip("mlflow")
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(folder / "server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240  # it migrates its database and imports its web stack first
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own session: the server and the web worker it started
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:  # uvicorn waits for open connections to close
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        log.close()


@pytest.fixture(scope="module")
def tracked(mlflow_server, tmp_path_factory):
    """A small simulated sweep of two drivers, logged to MLflow and to W&B offline at once (W&B runs two Ray
    actors per trial: 3 trials keep it small)."""
    pytest.importorskip("wandb")
    from sweep import runner

    folder = tmp_path_factory.mktemp("tracked")
    spec = load(QUICK, (f"storage_path={folder}", "num_samples=3", "drivers=2", "simulate.seconds_per_epoch=0",
                        f"tracking.mlflow.uri={mlflow_server}", "tracking.mlflow.experiment=tracked",
                        "tracking.wandb.mode=offline"))
    try:
        found = runner.run(spec, argv=["test"])
    finally:
        import ray

        ray.shutdown()
    return found


@pytest.mark.slow
def test_mlflow_holds_a_run_per_trial_with_params_status_and_every_epoch(mlflow_server, tracked):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("tracked")
    runs = {r.data.tags["tune_trial_id"]: r for r in client.search_runs([experiment.experiment_id])}
    trials = tracked.trials.set_index("trial_id")
    assert set(runs) == set(trials.index), "every trial of both drivers, once"
    epochs = tracked.epochs
    for trial_id, run in runs.items():
        row = trials.loc[trial_id]
        assert run.info.status == "FINISHED" and run.data.tags["status"] == row["status"]
        assert run.data.params["variant"] == row["variant"] and float(run.data.params["lr"]) == pytest.approx(row["lr"])
        assert int(run.data.params["latent_dim"]) == row["latent_dim"] and run.data.params["epochs"] == "4"
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_loss"))
        expected = epochs[epochs["trial_id"] == trial_id].sort_values("epoch")
        assert [step for step, _ in history] == expected["epoch"].tolist()
        assert [value for _, value in history] == pytest.approx(expected["val_loss"].tolist())
    assert "completed" in set(trials["status"])


@pytest.mark.slow
def test_wandb_offline_writes_a_run_file_per_trial(tracked):
    runs = {p.name.rsplit("-", 1)[1]: p for p in (tracked.home / "wandb").glob("offline-run-*")}
    trials = tracked.trials.set_index("trial_id")
    assert set(runs) == set(trials.index)
    for trial_id, folder in runs.items():
        data = (folder / f"run-{trial_id}.wandb").read_bytes()
        # The run file is W&B's record log: each logged key and config value is in it as written.
        assert b"val_loss" in data and trials.loc[trial_id, "status"].encode() in data


@pytest.mark.slow
def test_a_resumed_trial_goes_on_in_the_run_it_had(mlflow_server, tracked):
    from mlflow.tracking import MlflowClient

    from sweep.tracking import MlflowRuns

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("tracked").experiment_id
    before = {r.data.tags["tune_trial_id"]: r.info.run_id for r in client.search_runs([experiment])}
    trial_id = tracked.trials["trial_id"].iloc[0]
    runs = MlflowRuns(tracked.spec)  # a callback as Tune.restore unpickles it: no run known yet
    runs.setup()
    trial = types.SimpleNamespace(trial_id=trial_id, config={}, last_result={})
    runs.log_trial_start(trial)
    assert client.get_run(before[trial_id]).info.status == "RUNNING"
    runs.log_trial_end(trial, failed=True)
    after = {r.data.tags["tune_trial_id"]: r.info.run_id for r in client.search_runs([experiment])}
    assert after == before and client.get_run(before[trial_id]).info.status == "FAILED"


@pytest.mark.slow
def test_check_asks_the_server_and_makes_no_experiment(mlflow_server, capsys, no_ray):
    from mlflow.tracking import MlflowClient

    code, out, err = run_cli(capsys, "check", QUICK, "--set", f"tracking.mlflow.uri={mlflow_server}",
                             "--set", "tracking.mlflow.experiment=only-checked")
    assert code == 0 and "only-checked" in out, err
    assert MlflowClient(mlflow_server).get_experiment_by_name("only-checked") is None
