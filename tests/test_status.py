"""`sweep status`, `sweep stop` and `sweep ls` on live sweeps: the status.json a driver keeps, read back
and merged; refusals in one line; and one real (simulated) sweep watched, stopped and resumed."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from filelock import FileLock

from sweep import load_results
from cli_calls import run_cli
from sweep.status import STATUS_FILE, lock_path, read_status, status_name

TINY = {"name": "tiny", "train": {"epochs": 2, "train_subset": 500},
        "space": {"latent_dim": {"choice": [2, 4]}, "lr": {"loguniform": [1.0e-3, 1.0e-2]}}, "num_samples": 4}


@pytest.fixture
def tiny(tmp_path, data_dir, monkeypatch):
    """results/tiny: a sweep.yaml of two drivers and nothing else yet; the status files are each test's."""
    from sweep.spec import parse

    monkeypatch.chdir(tmp_path)
    home = tmp_path / "results" / "tiny"
    home.mkdir(parents=True)
    spec = parse({**TINY, "drivers": 2, "storage_path": str(tmp_path / "results"), "data_dir": data_dir})
    (home / "sweep.yaml").write_text(yaml.safe_dump({"sweep": spec.to_dict(), "meta": {"command": "sweep run s.yaml"}}))
    return home


def write_status(home: Path, driver: int = 0, host: str | None = None, pid: int | None = None, **values):
    now = time.time()
    document = {"driver": {"pid": pid or os.getpid(), "host": host or socket.gethostname(), "index": driver},
                "started": now - 60, "updated": now, "state": "running", **values}
    (home / status_name(driver)).write_text(json.dumps(document))


def counts(**given):
    return {s: given.get(s, 0) for s in ("running", "pending", "completed", "stopped", "diverged", "error")}


def test_a_running_sweep_of_two_drivers_counts_both_and_estimates_the_time_left(capsys, tiny):
    write_status(tiny, 0, counts=counts(running=1, completed=1), epochs=3, finished_this_run=1,
                 best={"val_loss": 0.2, "trial_id": "a", "params": {"variant": "vanilla", "lr": 0.001}})
    write_status(tiny, 1, counts=counts(running=1, stopped=1), epochs=2, finished_this_run=1,
                 best={"val_loss": 0.1, "trial_id": "b", "params": {"variant": "conv", "latent_dim": 4}})
    with FileLock(str(lock_path(tiny)), timeout=0):  # as runner.claim holds it
        status = read_status("tiny")
        code, out, err = run_cli(capsys, "status", "tiny")
        assert code == 0 and not err
        code, listed, _ = run_cli(capsys, "ls")
    assert status["state"] == "running" and status["done"] == 2 and status["epochs"] == 5
    assert status["counts"] == counts(running=2, completed=1, stopped=1)  # 4 samples: none pending
    assert status["best"]["trial_id"] == "b"
    assert 55 < status["remaining_s"] < 70  # 2 trials in ~60 s, 2 left
    assert "sweep tiny: running" in out and "2/4 done (1 completed, 1 stopped" in out and "remaining ~1m" in out
    assert "best val_loss: 0.10000 (trial b: variant=conv, latent_dim=4)" in out and "`sweep stop" in out
    assert "(running: 2/4 done, 2 running)" in listed.splitlines()[1] and "0.10000" in listed.splitlines()[1]


def test_status_adds_up_every_drivers_compute_so_far(capsys, tiny):
    write_status(tiny, 0, counts=counts(running=1), epochs=3,
                 compute={"cpu_s": 1800.0, "device_s": 3600.0, "gpu_s": 3600.0, "gpu_epochs": 30})
    write_status(tiny, 1, counts=counts(running=1), epochs=2,
                 compute={"cpu_s": 1800.0, "device_s": 3600.0, "gpu_s": 0.0, "gpu_epochs": 0})
    with FileLock(str(lock_path(tiny)), timeout=0):
        status = read_status("tiny")
        code, out, _ = run_cli(capsys, "status", "tiny")
    assert code == 0 and status["compute"] == {"cpu_s": 3600.0, "device_s": 7200.0, "gpu_s": 3600.0, "gpu_epochs": 30}
    assert "compute: 1 CPU-hours, 1 GPU-hours (2 device-hours), 30 trial-epochs per GPU-hour" in out


def test_a_driver_that_died_leaves_a_stopped_sweep_and_stop_refuses_it(capsys, tiny):
    write_status(tiny, 0, counts=counts(running=1, completed=1), epochs=3)  # "running", but no lock is held
    status = read_status("tiny")
    assert status["state"] == "stopped" and "ended without finishing" in status["why"]
    assert status["counts"]["running"] == 0
    code, out, err = run_cli(capsys, "stop", "tiny")
    assert code == 2 and not out and err.count("\n") == 1
    assert "sweep tiny is stopped, not running (1 completed)" in err and "`sweep resume tiny` continues it" in err


def test_stop_refuses_a_driver_on_another_host_and_says_how_to_stop_it_there(capsys, tiny):
    write_status(tiny, 0, host="elsewhere", pid=4242, counts=counts(running=1))
    code, out, err = run_cli(capsys, "stop", "tiny")
    assert code == 2 and not out and err.count("\n") == 1
    assert "runs on host elsewhere (driver PID 4242)" in err and "`sweep stop tiny` on elsewhere" in err


def test_stop_refuses_a_pid_that_is_not_the_sweeps_driver(capsys, tiny):
    write_status(tiny, 0, counts=counts(running=1))  # this test's PID: it holds the lock, but not by that file
    with FileLock(str(lock_path(tiny)), timeout=0):
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            write_status(tiny, 0, pid=sleeper.pid, counts=counts(running=1))
            code, _, err = run_cli(capsys, "stop", "tiny")
            assert sleeper.poll() is None, "a process that is not the driver must not be signalled"
        finally:
            sleeper.kill()
            sleeper.wait()
    assert code == 2 and err.count("\n") == 1 and f"PID {sleeper.pid}" in err and "is not the driver" in err


def test_a_sweep_asked_to_stop_is_stopping_and_a_second_stop_does_not_signal_it_again(capsys, tiny):
    from sweep.status import STOP_FILE

    write_status(tiny, 0, counts=counts(running=1, completed=1))
    (tiny / STOP_FILE).write_text(f"{os.getpid()}\n")  # what `sweep stop` leaves before its SIGTERM
    with FileLock(str(lock_path(tiny)), timeout=0):
        stopping = read_status("tiny")
        assert stopping["state"] == "stopping" and stopping["counts"]["running"] == 1  # it checkpoints them now
        code, out, err = run_cli(capsys, "stop", "tiny")  # a SIGTERM now would stop this test's process
    assert code == 2 and not out and err.count("\n") == 1
    assert "sweep tiny is already stopping" in err and "`sweep status tiny` follows it" in err


def test_an_older_finished_sweep_without_status_json_reads_its_tables(capsys, tiny):
    from sweep.results import TRIAL_COLUMNS

    rows = [{"trial_id": f"t{i}", "variant": "vanilla", "latent_dim": 2, "lr": 0.003, "status": status,
             "epochs": 2 if status == "completed" else 1, "final_val_loss": 0.05 + i / 100}
            for i, status in enumerate(["completed", "stopped", "diverged", "error"])]
    pd.DataFrame(rows, columns=TRIAL_COLUMNS).to_parquet(tiny / "trials.parquet", index=False)
    pd.DataFrame([{"trial_id": "t0", "epoch": e, "val_loss": 0.05} for e in (1, 2)]).to_parquet(
        tiny / "epochs.parquet", index=False)
    status = read_status("tiny")
    assert status["state"] == "finished" and status["source"] == "tables"
    assert status["counts"] == counts(completed=1, stopped=1, diverged=1, error=1) and status["epochs"] == 5
    code, _, err = run_cli(capsys, "stop", "tiny")
    assert code == 2 and err.count("\n") == 1 and "sweep tiny has finished" in err and "nothing to stop" in err


@pytest.mark.parametrize("command", ["status", "stop"])
def test_status_and_stop_of_an_unknown_sweep(capsys, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, command, "nope")
    assert code == 2 and not out and err.count("\n") == 1 and "no sweep 'nope'" in err and "sweep ls" in err


# ---- one simulated sweep, end to end ------------------------------------------------------------------

def start(root: Path, command: str, *sets: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "sweep.cli", command]
    args += ["configs/quick.yaml", "--set", f"storage_path={root}", *sets] if command == "run" else [str(root / "quick")]
    return subprocess.Popen(args, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def status_json(capsys, home: Path) -> dict:
    code, out, err = run_cli(capsys, "status", home, "--json")
    assert code == 0, err
    return json.loads(out)


def table_counts(home: Path) -> tuple[dict, int]:
    trials = load_results(str(home)).trials
    found = trials["status"].value_counts().to_dict()
    return {s: found.get(s, 0) for s in ("completed", "stopped", "diverged", "error")}, int(trials["epochs"].sum())


@pytest.mark.slow
def test_status_follows_a_running_sweep_stop_ends_it_cleanly_and_resume_finishes_it_exactly(capsys, tmp_path,
                                                                                            data_dir):
    """One sweep: `status` while it runs (never more than the tables end with), `ls` with its live count,
    `stop` (clean: exit 143, tables written), `status` and `stop` of the stopped sweep, `resume` to the end,
    and `status` then equal to the tables exactly, with every trial once and no epoch twice."""
    home = tmp_path / "quick"
    proc = start(tmp_path, "run", "--set", "num_samples=12", "--set", "train.epochs=4",
                 "--set", "simulate={seconds_per_epoch: 0.6}")
    seen, listed = [], ""
    while proc.poll() is None:
        if (home / STATUS_FILE).is_file():
            status = status_json(capsys, home)
            if status["state"] == "running":
                seen.append(status)
                if not listed:
                    code, out, _ = run_cli(capsys, "ls", "--results", tmp_path)
                    listed = out if "running:" in out else ""
                if status["done"] >= 4 and listed:
                    break
        time.sleep(0.3)
    assert proc.poll() is None, "the sweep ended before it could be stopped: " + proc.communicate()[0][-2000:]
    line = next(line for line in listed.splitlines() if line.startswith("quick"))
    assert "running:" in line and "/12 done" in line
    code, out, err = run_cli(capsys, "stop", home)
    output, _ = proc.communicate(timeout=300)
    assert code == 0 and not err, err
    assert proc.returncode == 143 and "stopped by SIGTERM" in output and "Traceback" not in output, output[-3000:]
    assert "sweep quick: stopped:" in out and f"`sweep resume {home}` continues it" in out

    stopped = status_json(capsys, home)
    assert stopped["state"] == "stopped" and stopped["why"] == "stopped by SIGTERM"
    final, epochs = table_counts(home)
    assert {s: stopped["counts"][s] for s in final} == final and stopped["epochs"] == epochs
    for status in seen:  # live counts only grow toward what the tables end with
        assert all(status["counts"][s] <= final[s] for s in final), (status["counts"], final)
        assert status["done"] <= stopped["done"] and status["counts"]["running"] <= 2
    assert [s["done"] for s in seen] == sorted(s["done"] for s in seen)
    code, _, err = run_cli(capsys, "stop", home)
    assert code == 2 and err.count("\n") == 1 and "is stopped, not running" in err and "sweep resume" in err

    resumed = start(tmp_path, "resume")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-3000:]
    finished = status_json(capsys, home)
    final, epochs = table_counts(home)
    assert finished["state"] == "finished" and finished["done"] == 12 == sum(final.values())
    assert {s: finished["counts"][s] for s in final} == final and finished["epochs"] == epochs
    found = load_results(str(home))
    assert found.trials["trial_id"].is_unique and not found.epochs.duplicated(["trial_id", "epoch"]).any()
    for row in found.trials.itertuples():
        assert len(found.epochs[found.epochs["trial_id"] == row.trial_id]) == row.epochs
    code, _, err = run_cli(capsys, "stop", home)
    assert code == 2 and err.count("\n") == 1 and "has finished" in err
