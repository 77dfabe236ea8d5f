"""Faults injected into real sweeps: killed workers and drivers, corrupt checkpoints, exhausted retries,
diverging learning rates, a full or read-only disk. Each asserts the sweep completes with the exact
trial count, no duplicate trial, and every completed trial's rows present and unchanged.

Set AESWEEP_FAULT_REPORT=path to also write the table of faults (RELIABILITY.md quotes it).
"""
import glob
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from aemodels import TrainState, train
from sweep import load_results, runner
from sweep.driver import STOP_GRACE_S
from sweep.results import read_spec
from sweep.study import open_storage

pytestmark = pytest.mark.slow
REPORT: list[dict] = []
QUICK = ["--set", "train.train_subset=2000"]


@pytest.fixture(scope="module", autouse=True)
def fault_table():
    yield
    lines = ["| fault | injected | sweep completed | trials (expected) | duplicates | results lost | wall s | note |",
             "| --- | ---: | --- | --- | ---: | ---: | ---: | --- |"]
    for r in REPORT:
        lines.append(f"| {r['fault']} | {r['injected']} | {r['completed']} | {r['trials']} ({r['expected']}) | "
                     f"{r['duplicates']} | {r['lost']} | {r['wall_s']:.1f} | {r.get('note', '')} |")
    table = "\n".join(lines)
    print("\n" + table)
    if os.environ.get("AESWEEP_FAULT_REPORT"):
        Path(os.environ["AESWEEP_FAULT_REPORT"]).write_text(table + "\n")


def start(root: Path, *sets: str, name: str = "quick", command: str = "run") -> subprocess.Popen:
    args = [sys.executable, "-m", "sweep.cli", command]
    args += ["configs/quick.yaml", "--set", f"storage_path={root}", "--set", f"name={name}", *QUICK, *sets] \
        if command == "run" else [str(root / name)]
    return subprocess.Popen(args, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def result_rows(home: Path) -> dict[str, list[dict]]:
    rows = {}
    for path in glob.glob(str(home / "ray*" / "*" / "result.json")):  # ray/, and ray-<k>/ of another driver
        lines = [json.loads(line) for line in open(path) if line.strip().endswith("}")]
        if lines:
            rows[lines[0]["trial_id"]] = lines
    return rows


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def solo_history(home: Path, row) -> list[float]:
    """The trial's config trained alone in this process, one thread like a trial worker."""
    spec = read_spec(home)
    params = {k: (None if pd.isna(row[k]) else row[k]) for k in ("variant", "latent_dim", "lr", "noise_factor",
                                                                  "sparsity_weight")}
    params = {k: (v.item() if hasattr(v, "item") else v) for k, v in params.items()}
    config = spec.train_config(params).replace(epochs=int(row["epochs"]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [h["val_loss"] for h in train(config).history]
    finally:
        torch.set_num_threads(threads)


def check_sweep(home: Path, expected: int, fault: str, injected: int, wall: float, before=None, note="") -> pd.DataFrame:
    """Exact trial count, no duplicate trial or configuration, rows of trials finished earlier unchanged."""
    found = load_results(str(home), rebuild=True)
    trials, epochs = found.trials, found.epochs
    assert len(trials) == expected and trials["trial_id"].is_unique
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    for row in trials.itertuples():
        assert len(epochs[epochs["trial_id"] == row.trial_id]) == row.epochs
    finished = trials[trials["status"].isin(["completed", "stopped", "diverged"])]
    configs = finished[["variant", "latent_dim", "lr", "noise_factor", "sparsity_weight"]].astype(str)
    assert not configs.duplicated().any(), "a configuration ran twice"
    lost = 0
    for trial_id, rows in (before or {}).items():
        curve = epochs[epochs["trial_id"] == trial_id].set_index("epoch")["val_loss"]
        lost += sum(1 for r in rows if r["epoch"] not in curve.index or curve[r["epoch"]] != r["val_loss"])
    assert lost == 0
    REPORT.append({"fault": fault, "injected": injected, "completed": "yes", "trials": len(trials),
                   "expected": expected, "duplicates": 0, "lost": lost, "wall_s": wall, "note": note})
    return trials


def kill_workers(proc, home: Path, count: int, per_trial: int = 1, only=None, safe_epochs=None) -> list[str]:
    """SIGKILL the worker process of running trials, `count` times, each trial at most `per_trial` times.

    A worker is killed right after its trial reported an epoch in `safe_epochs`, epochs after which
    ASHA cannot stop the trial, and only while that report is younger than 0.9 epochs: the worker
    is then surely still running that trial. (The driver can write a result to result.json late; a
    stale row's worker may have moved on to another trial, and a reused worker killed while it
    starts its next trial fails that trial for good: Ray Tune retries only RUNNING trials; see
    RELIABILITY.md.)  The members of a pack report at once, so one look may find several to kill:
    on a loaded machine the driver can write their rows so late that a later look finds none fresh.
    """
    killed: list[tuple[int, str]] = []
    while proc.poll() is None and len(killed) < count:
        for trial_id, rows in result_rows(home).items():
            last = rows[-1]
            times = sum(1 for _, t in killed if t == trial_id)
            if len(killed) >= count or last["status"] != "running" or times >= per_trial \
                    or (only and trial_id != only) \
                    or (safe_epochs and last["epoch"] not in safe_epochs) \
                    or (safe_epochs and time.time() - last.get("reported_at", 0) > 0.9 * last["epoch_s"]) \
                    or any(pid == last["pid"] for pid, _ in killed):
                continue
            try:
                os.kill(last["pid"], signal.SIGKILL)
                killed.append((last["pid"], trial_id))
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return [t for _, t in killed]


def test_killed_trial_workers_are_retried_from_their_checkpoints(tmp_path, data_dir):
    tick = time.perf_counter()
    # 16 trials of 5,000 images: enough reports, and epochs long enough (~1.5 s), that five of them reach
    # result.json fresh enough to act on, even when the driver writes them late
    # report: epoch, so that result.json shows the epochs between rungs at which a kill is safe (see kill_workers)
    proc = start(tmp_path, "--set", "num_samples=16", "--set", "train.epochs=6", "--set", "scheduler.grace_period=2",
                 "--set", "train.train_subset=5000", "--set", "scheduler.report=epoch")
    killed = kill_workers(proc, tmp_path / "quick", count=5, per_trial=2, safe_epochs={1, 3, 5})  # rungs: 2, 4
    finish(proc)
    wall = time.perf_counter() - tick
    assert len(killed) >= 5
    trials = check_sweep(tmp_path / "quick", 16, "SIGKILL of a trial's worker process", len(killed), wall)
    assert set(trials["status"]) <= {"completed", "stopped"}
    assert trials["num_failures"].sum() >= 5
    epochs = load_results(str(tmp_path / "quick")).epochs
    for row in trials[trials["trial_id"].isin(killed)].to_dict("records"):  # history as if nothing happened
        curve = epochs[epochs["trial_id"] == row["trial_id"]]["val_loss"]
        assert list(curve) == solo_history(tmp_path / "quick", row)


def test_killed_driver_then_resume_finishes_the_sweep_exactly(tmp_path, data_dir):
    sets = ["--set", "num_samples=10", "--set", "train.epochs=3"]
    tick = time.perf_counter()
    finish(start(tmp_path, *sets, name="whole"))
    uninterrupted = time.perf_counter() - tick

    tick = time.perf_counter()
    proc = start(tmp_path, *sets)
    home = tmp_path / "quick"
    while proc.poll() is None and sum(len(r) for r in result_rows(home).values()) < 8:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, as a crash would
    proc.wait()
    before = {t: rows for t, rows in result_rows(home).items() if rows[-1]["status"] != "running"
              or rows[-1]["epoch"] >= 3}
    finish(start(tmp_path, command="resume"))
    wall = time.perf_counter() - tick
    trials = check_sweep(home, 10, "SIGKILL of the driver (and its Ray), then `sweep resume`", 1, wall, before,
                         note=f"uninterrupted: {uninterrupted:.1f} s ({wall / uninterrupted:.2f}x)")
    assert set(trials["status"]) <= {"completed", "stopped"}
    study = optuna.load_study(study_name="quick", storage=open_storage(f"{home}/study.journal", writer=False))
    told = [t for t in study.trials if t.state.is_finished() and "tune_trial_id" in t.user_attrs]
    assert {t.user_attrs["tune_trial_id"] for t in told} == set(trials["trial_id"])


def test_a_resume_refuses_a_cut_short_state_in_one_line_and_resumes_once_it_is_moved_out(tmp_path, data_dir):
    finish(start(tmp_path, "--set", "num_samples=2", "--set", "train.epochs=1"))
    home = tmp_path / "quick"
    finish(start(tmp_path, command="resume"))  # Ray's second snapshot of each state beside its first
    before = load_results(str(home)).trials
    for pattern in ("experiment_state-*.json", "searcher-state-*.pkl"):
        states = sorted(glob.glob(str(home / "ray" / pattern)))
        assert len(states) == 2, states  # the run's and the resume's
        data = Path(states[-1]).read_bytes()  # Ray writes it whole (sweep.storage.WholeFiles); cut it by hand
        Path(states[-1]).write_bytes(data[: len(data) // 2])

    proc = subprocess.run([sys.executable, "-m", "sweep.cli", "resume", str(home)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    cut = proc.stderr.split(" is cut short")[0].split("error: ", 1)[1]
    assert f"move it out of {home / 'ray'} so that Ray resumes from" in proc.stderr, proc.stderr
    os.replace(cut, tmp_path / Path(cut).name)  # as told; the next refusal names the other file
    proc = subprocess.run([sys.executable, "-m", "sweep.cli", "resume", str(home)], capture_output=True, text=True)
    assert proc.returncode == 2 and " is cut short" in proc.stderr and cut not in proc.stderr, proc.stderr
    cut = proc.stderr.split(" is cut short")[0].split("error: ", 1)[1]
    os.replace(cut, tmp_path / Path(cut).name)

    finish(start(tmp_path, command="resume"))
    after = load_results(str(home)).trials
    assert dict(zip(after["trial_id"], after["status"])) == dict(zip(before["trial_id"], before["status"]))


def test_corrupt_latest_checkpoint_falls_back_to_the_one_before(tmp_path, data_dir, monkeypatch, caplog, small):
    from ray.tune import Checkpoint

    import sweep.trial as trial_mod

    config = small(epochs=2)
    states = []
    train(config, checkpoint=states.append)
    trial_dir = tmp_path / "trial"
    for i, state in enumerate(states):
        (trial_dir / f"checkpoint_00000{i}").mkdir(parents=True)
        state.save(trial_dir / f"checkpoint_00000{i}" / trial_mod.STATE_FILE)
        (trial_dir / f"checkpoint_00000{i}" / trial_mod.HISTORY_FILE).write_text(json.dumps(state.history))
    latest = trial_dir / "checkpoint_000001" / trial_mod.STATE_FILE
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated, as a crash mid-write of a copy would leave it
    monkeypatch.setattr(trial_mod.tune, "get_checkpoint", lambda: Checkpoint(str(latest.parent)))
    with caplog.at_level(logging.WARNING):
        record = trial_mod.TrialRecord(str(tmp_path))
        state = record.restore(TrainState.load)
    assert state.epoch == 1 and "falling back to the one before it" in caplog.text
    assert [row["epoch"] for row in record.history] == [1]


def test_corrupt_checkpoint_in_a_live_sweep(tmp_path, data_dir):
    tick = time.perf_counter()
    proc = start(tmp_path, "--set", "num_samples=4", "--set", "train.epochs=4", "--set", "scheduler.grace_period=4",
                 "--set", "scheduler.report=epoch")  # a checkpoint every epoch: two before the kill
    home, target = tmp_path / "quick", None
    while proc.poll() is None and target is None:
        for trial_id, rows in result_rows(home).items():
            fresh = time.time() - rows[-1]["reported_at"] < 0.9 * rows[-1]["epoch_s"]  # see kill_workers
            if rows[-1]["status"] == "running" and rows[-1]["epoch"] in (2, 3) and fresh:
                checkpoints = sorted(glob.glob(str(home / "ray" / f"*_{trial_id}_*" / "checkpoint_*" / "state.pt")))
                if len(checkpoints) >= 2:
                    Path(checkpoints[-1]).write_bytes(b"not a checkpoint")
                    os.kill(rows[-1]["pid"], signal.SIGKILL)
                    target = trial_id
                    break
        time.sleep(0.05)
    finish(proc)
    trials = check_sweep(home, 4, "corrupt latest checkpoint, then SIGKILL of its worker", 1,
                         time.perf_counter() - tick)
    row = trials.set_index("trial_id").loc[target]
    assert row["status"] == "completed" and row["num_failures"] == 1
    epochs = load_results(str(home)).epochs
    curve = epochs[epochs["trial_id"] == target]["val_loss"]
    assert list(curve) == solo_history(home, row.to_dict())


def test_a_trial_that_exhausts_its_retries_ends_as_error_and_the_rest_finish(tmp_path, data_dir):
    tick = time.perf_counter()
    # 8 epochs of 8,000 images, none a rung: seven reports after which the victim can be killed, so that two
    # fresh ones come even when the driver writes results late (with five epochs, a CI run got only one)
    proc = start(tmp_path, "--set", "num_samples=4", "--set", "train.epochs=8", "--set", "scheduler.grace_period=8",
                 "--set", "scheduler.report=epoch",  # results at every epoch, where kill_workers finds its moments
                 "--set", "max_failures=1", "--set", "train.train_subset=8000")
    home, victim = tmp_path / "quick", None
    while proc.poll() is None and victim is None:
        running = [t for t, rows in result_rows(home).items() if rows[-1]["status"] == "running"]
        victim = running[0] if running else None
        time.sleep(0.1)
    killed = kill_workers(proc, home, count=2, per_trial=2, only=victim, safe_epochs=set(range(1, 8)))
    finish(proc)
    trials = check_sweep(home, 4, "one trial's worker killed past max_failures", len(killed),
                         time.perf_counter() - tick, note="that trial ends as error")
    assert len(killed) == 2
    statuses = trials.set_index("trial_id")["status"]
    assert statuses[victim] == "error" and (statuses.drop(victim) == "completed").all()
    assert trials.set_index("trial_id").loc[victim, "error"]


def test_diverging_learning_rate_is_a_bad_result_not_a_crash(tmp_path, data_dir):
    tick = time.perf_counter()
    proc = start(tmp_path, "--set", "num_samples=4", "--set", "train.epochs=2", "--set", "space.variant=vanilla",
                 "--set", "space.noise_factor=null", "--set", "space.sparsity_weight=null",
                 "--set", "space.lr={loguniform: [1.0e-4, 1.0e7]}",
                 "--set", "points=[{latent_dim: 8, lr: 1.0e6}, {latent_dim: 8, lr: 1.0e-3}]")
    finish(proc)
    trials = check_sweep(tmp_path / "quick", 4, "diverging learning rate (lr=1e6)", 1, time.perf_counter() - tick)
    diverged = trials[trials["lr"] == 1e6].iloc[0]
    assert diverged["status"] == "diverged" and diverged["epochs"] == 1
    study = optuna.load_study(study_name="quick", storage=open_storage(f"{tmp_path}/quick/study.journal", writer=False))
    record = next(t for t in study.trials if t.user_attrs.get("tune_trial_id") == diverged["trial_id"])
    assert record.state == optuna.trial.TrialState.PRUNED and record.user_attrs["status"] == "diverged"


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_full_disk_and_read_only_folder_leave_previous_tables_intact(small_disk, data_dir):
    tick = time.perf_counter()
    finish(start(small_disk, "--set", "num_samples=3", "--set", "train.epochs=1", "--set", "train.train_subset=500"))
    home = small_disk / "quick"
    tables = {name: (home / name).read_bytes() for name in ("trials.parquet", "trials.csv", "epochs.parquet",
                                                              "best_config.yaml")}
    filler = small_disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=64"], capture_output=True)
    proc = subprocess.run([sys.executable, "-m", "sweep.cli", "analyze", str(home)], capture_output=True, text=True)
    assert proc.returncode == 2 and "No space left on device" in proc.stderr and proc.stderr.count("\n") == 1
    assert all((home / name).read_bytes() == data for name, data in tables.items())
    assert not list(home.glob(".*.tmp")), "no temp file left behind"
    filler.unlink()

    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    proc = subprocess.run([sys.executable, "-m", "sweep.cli", "analyze", str(home)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Read-only file system" in proc.stderr and proc.stderr.count("\n") == 1
    assert all((home / name).read_bytes() == data for name, data in tables.items())
    proc = subprocess.run([sys.executable, "-m", "sweep.cli", "run", "configs/quick.yaml", "--set",
                           f"storage_path={small_disk}", "--set", "name=another"], capture_output=True, text=True)
    assert proc.returncode == 2 and "is not writable" in proc.stderr and not (small_disk / "another").exists()
    REPORT.append({"fault": "full disk, then read-only results folder (tmpfs)", "injected": 3, "completed": "yes",
                   "trials": 3, "expected": 3, "duplicates": 0, "lost": 0, "wall_s": time.perf_counter() - tick,
                   "note": "analyze/run exit 2 with one line; previous tables byte-identical"})


def _pids_titled(fragment: str) -> list[int]:
    pids = []
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            if fragment in Path(cmdline).read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.split("/")[2]))
        except OSError:
            pass
    return pids


def test_packed_sweep_survives_killed_proxies_and_a_killed_trainer(tmp_path, data_dir):
    tick = time.perf_counter()
    # 12 trials: a pack's epoch is short, so on a loaded machine many rows are written too late to act on
    # (kill_workers acts only on rows younger than 0.9 epochs); every trial's epoch 1 is another chance
    proc = start(tmp_path, "--set", "num_samples=12", "--set", "train.epochs=4", "--set", "scheduler.grace_period=2",
                 "--set", "resources.execution=packed", "--set", "resources.pack_size=4",
                 "--set", "scheduler.report=epoch")  # as in the worker-kill test: kills between rungs
    home = tmp_path / "quick"
    killed = kill_workers(proc, home, count=2, per_trial=1, safe_epochs={1, 3})  # two trials' proxy processes
    trainer_kills = 0
    while proc.poll() is None and trainer_kills == 0:  # then the trainer, holding every member's weights
        if sum(len(r) for r in result_rows(home).values()) >= 12:
            for pid in _pids_titled("PackTrainer"):
                os.kill(pid, signal.SIGKILL)
                trainer_kills += 1
        time.sleep(0.2)
    finish(proc)
    assert len(killed) == 2 and trainer_kills >= 1
    trials = check_sweep(home, 12, "packed: SIGKILL of 2 trial proxies, then of the trainer", len(killed) + trainer_kills,
                         time.perf_counter() - tick, note="members rejoin a restarted trainer from their checkpoints")
    assert set(trials["status"]) <= {"completed", "stopped"} and trials["num_failures"].sum() >= 3
    epochs = load_results(str(home)).epochs
    for row in trials[trials["num_failures"] > 0].to_dict("records"):
        # The trainer uses both cores, the solo run one thread: matmul sums round differently, so the
        # packed requirement's tolerance (1e-3 relative) applies rather than exact equality.
        curve = epochs[epochs["trial_id"] == row["trial_id"]]["val_loss"]
        assert list(curve) == pytest.approx(solo_history(home, row), rel=1e-3)


def test_resume_refuses_a_damaged_study_and_changes_nothing(tmp_path, data_dir):
    """A study.journal cut in the middle loses finished trials that Ray's snapshot and the tables list:
    resume must refuse rather than let Ray start a fresh experiment over the sweep (ray#30861)."""
    finish(start(tmp_path, "--set", "num_samples=3", "--set", "train.epochs=1"))
    home = tmp_path / "quick"
    journal = home / "study.journal"
    whole = journal.read_bytes()
    journal.write_bytes(whole[: len(whole) // 2])
    before = {p.name: p.read_bytes() for p in home.iterdir() if p.is_file()}
    proc = subprocess.run([sys.executable, "-m", "sweep.cli", "resume", str(home)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "lacks" in proc.stderr, proc.stderr
    assert {p.name: p.read_bytes() for p in home.iterdir() if p.is_file()} == before
    assert len(pd.read_parquet(home / "trials.parquet")) == 3
    journal.write_bytes(b"{garbage\n" + whole)  # damaged at its start: cannot be replayed at all
    proc = subprocess.run([sys.executable, "-m", "sweep.cli", "resume", str(home)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "cannot be read" in proc.stderr, proc.stderr
    assert len(pd.read_parquet(home / "trials.parquet")) == 3


def test_trials_that_ended_between_two_ray_snapshots_are_kept(tmp_path, data_dir):
    """Ray's snapshot lags the study: a trial that started and ended after the last snapshot is not in it,
    another that ASHA stopped is still RUNNING or ERROR there. Tables and a resume keep both, by the study."""
    finish(start(tmp_path, "--set", "num_samples=5", "--set", "train.epochs=2", "--set", "searcher.n_startup_trials=5"))
    home = tmp_path / "quick"
    expected = pd.read_parquet(home / "trials.parquet").set_index("trial_id")
    epochs_before = len(pd.read_parquet(home / "epochs.parquet"))
    state_file = sorted(glob.glob(str(home / "ray" / "experiment_state-*.json")))[-1]
    state = json.loads(Path(state_file).read_text())
    entries = state["trial_data"]
    trials = [json.loads(entry[0]) for entry in entries]
    stopped = [i for i, t in enumerate(trials) if expected.loc[t["trial_id"], "status"] == "stopped"]
    assert len(stopped) >= 2, expected
    dropped, lagging, errored = stopped[0], stopped[1], [i for i in range(len(trials)) if i not in stopped[:2]][0]
    for index, status in ((lagging, "RUNNING"), (errored, "ERROR")):
        trials[index]["status"] = status
        entries[index][0] = json.dumps(trials[index])
    del entries[dropped]
    Path(state_file).write_text(json.dumps(state))
    for name in ("trials.parquet", "trials.csv", "epochs.parquet", "best_config.yaml"):
        (home / name).unlink()

    rebuilt = load_results(str(home), rebuild=True).trials.set_index("trial_id")
    assert len(rebuilt) == 5 and (rebuilt["status"] == expected.loc[rebuilt.index, "status"]).all()
    assert rebuilt["error"].isna().all()

    out = finish(start(tmp_path, command="resume"))
    found = load_results(str(home))
    assert len(found.trials) == 5, out[-2000:]
    statuses = found.trials.set_index("trial_id")["status"]
    assert (statuses == expected.loc[statuses.index, "status"]).all()
    assert len(found.epochs) == epochs_before


def test_sigterm_and_ctrl_c_stop_cleanly_and_resume_loses_nothing(tmp_path, data_dir):
    """SIGTERM to the driver, then Ctrl-C (SIGINT to the whole group) during the resume: each ends with
    the tables written, exit 143 / 130 and the command that continues; the last resume finishes exactly."""
    sets = ["--set", "num_samples=8", "--set", "train.epochs=3"]
    home = tmp_path / "quick"
    tick = time.perf_counter()
    proc = start(tmp_path, *sets)

    def checkpoints():  # written into the trials' folders as they report; Ray copies result.json there later
        return len(glob.glob(str(home / "ray" / "*" / "checkpoint_*")))

    for signum, send, code, command in ((signal.SIGTERM, os.kill, 143, "run"),
                                        (signal.SIGINT, os.killpg, 130, "resume")):
        if command == "resume":
            proc = start(tmp_path, command="resume")
        seen = checkpoints()
        while proc.poll() is None and checkpoints() < seen + 2:
            time.sleep(0.1)
        send(proc.pid, signum)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == code, out[-3000:]
        assert f"stopped by {signum.name}" in out and f"sweep resume {home}" in out and "Traceback" not in out
        assert (home / "trials.parquet").is_file()
    before = {t: rows for t, rows in result_rows(home).items() if rows[-1]["status"] != "running"}
    finish(start(tmp_path, command="resume"))
    check_sweep(home, 8, "SIGTERM to the driver, Ctrl-C during `sweep resume`, then `sweep resume`", 2,
                time.perf_counter() - tick, before)


def driver_pid(home: Path, driver: int) -> int | None:
    """The process of the sweep's driver `driver` (sweep.driver), if it runs."""
    for entry in os.listdir("/proc"):
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"sweep.driver" in args and str(home).encode() in args and str(driver).encode() in args[-3:]:
            return int(entry)
    return None


def driver_running_a_trial(home: Path, driver: int) -> bool:
    """Whether driver `driver` runs a trial now, as its own status file says (its PID, a running trial): a
    trial's rows reach Ray's folder only with Ray's snapshots, which may come only at the driver's end."""
    pid = driver_pid(home, driver)
    try:
        status = json.loads((home / f"status-{driver}.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(pid) and status["driver"]["pid"] == pid and status["state"] == "running" \
        and status.get("counts", {}).get("running", 0) >= 1


def test_a_sweep_of_two_drivers_survives_killed_drivers_a_stop_and_resumes_exactly(tmp_path):
    """Two Tune drivers share one study. Driver 1, SIGKILLed mid-sweep, is started again and resumes its
    experiment; SIGTERM to the sweep then stops both cleanly. `sweep resume` is then killed as a crash
    would (the first driver and its Ray): driver 1 holds its lock (which refuses another resume,
    test_runner) until it stops by itself. The last `sweep resume` finishes each driver's share, nothing lost.
    Each driver has 8 trials of 2.4 s: enough that each kill finds driver 1 with trials left to run."""
    sets = ["--set", "drivers=2", "--set", "num_samples=16", "--set", "train.epochs=4",
            "--set", "simulate.seconds_per_epoch=0.6"]
    home = tmp_path / "quick"
    tick = time.perf_counter()
    proc = start(tmp_path, *sets)
    pid = None
    while proc.poll() is None and not (glob.glob(str(home / "ray-1" / "*" / "result.json")) and
                                       driver_running_a_trial(home, 1) and (pid := driver_pid(home, 1))):
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    # Stopped as soon as driver 1 runs again: the sweep cannot end before it has (whatever the load),
    # and the stop reaches a driver that is still starting as well as one that runs trials.
    while proc.poll() is None and driver_pid(home, 1) in (None, pid):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143, out[-3000:]
    assert f"driver 1 ended with exit status -{signal.SIGKILL.value}; starting it again" in out
    assert "stopped by SIGTERM" in out and f"sweep resume {home}" in out and "Traceback" not in out
    assert driver_pid(home, 1) is None, "the stop must reach every driver"

    resumed = start(tmp_path, command="resume")
    while resumed.poll() is None and not driver_running_a_trial(home, 1):
        time.sleep(0.1)
    lock = runner.driver_lock(home, 1)
    assert runner.lock_held(lock), "driver 1 holds its lock while it runs its trials"
    os.killpg(resumed.pid, signal.SIGKILL)
    resumed.wait()
    assert driver_pid(home, 1), "driver 1 runs on after the first driver's crash until it notices"
    deadline = time.monotonic() + STOP_GRACE_S + 30
    while (driver_pid(home, 1) or runner.lock_held(lock)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert driver_pid(home, 1) is None, "driver 1 must end once the first driver is gone"
    assert not runner.lock_held(lock), "and release its lock, so that `sweep resume` may run"

    before = {t: rows for t, rows in result_rows(home).items() if rows[-1]["status"] != "running"}
    finish(start(tmp_path, command="resume"))
    check_sweep(home, 16, "two drivers: driver 1 SIGKILLed, SIGTERM to the sweep, `sweep resume` SIGKILLed, "
                "then `sweep resume`", 3, time.perf_counter() - tick, before)
    study = optuna.load_study(study_name="quick", storage=open_storage(str(home / "study.journal"), writer=False))
    drivers = pd.Series([t.user_attrs["driver"] for t in study.trials if t.state.is_finished()])
    assert drivers.value_counts().to_dict() == {0: 8, 1: 8}
    # Each driver's experiment holds its share (a trial's result.json may be missing: Ray copies it there
    # with its snapshots, and a killed driver misses one; the tables read that trial from its checkpoints).
    trial_ids = set(load_results(str(home)).trials["trial_id"])
    for folder in ("ray", "ray-1"):
        assert sum(1 for t in trial_ids if list((home / folder).glob(f"*_{t}_*"))) == 8
