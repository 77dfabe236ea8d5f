"""A real sweep through the CLI on a local Ray (CPU): tables, statuses, the study, best config, retrain."""
import ipaddress
import math
import os
import socket
import threading
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from sweep import load_results
from sweep.cli import main
from sweep.results import EPOCH_COLUMNS, TRIAL_COLUMNS
from sweep.study import open_storage

pytestmark = pytest.mark.slow
TRIALS, EPOCHS = 8, 8


LISTENERS: set[tuple[str, str]] = set()  # (process, address) of every socket Ray's processes listened on


def descendants(root: int) -> set[int]:
    """`root` and every process under it: the local Ray it started and that Ray's workers (not the Ray
    of another sweep on the same machine)."""
    parents = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parents[int(pid)] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, grown = {root}, True
    while grown:
        grown = False
        for pid, parent in parents.items():
            if parent in found and pid not in found:
                found.add(pid)
                grown = True
    return found


def listening_sockets() -> set[tuple[str, str]]:
    """(process, address) of the TCP sockets that this process and its Ray's processes listen on, from /proc."""
    addresses = {}
    for proto, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        with open(f"/proc/net/{proto}") as fh:
            for line in list(fh)[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    host = bytes.fromhex(fields[1].split(":")[0])
                    # /proc prints each 32-bit word of the address in the machine's byte order
                    host = b"".join(host[i:i + 4][::-1] for i in range(0, len(host), 4))
                    addresses[fields[9]] = socket.inet_ntop(family, host)
    found = set()
    for pid in descendants(os.getpid()):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in addresses:
                    found.add((command.rsplit("/", 1)[-1], addresses[link[8:-1]]))
        except OSError:  # a process that ended meanwhile
            continue
    return found


@pytest.fixture(scope="module")
def quick(tmp_path_factory, data_dir):
    """configs/quick.yaml, made smaller through --set, run once for the whole module; meanwhile, every
    socket Ray's processes listen on is recorded (LISTENERS)."""
    root = tmp_path_factory.mktemp("sweeps")
    running = threading.Event()
    running.set()

    def watch():
        while running.is_set():
            LISTENERS.update(listening_sockets())
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        code = main(["run", "configs/quick.yaml", "--set", f"storage_path={root}", "--set", f"num_samples={TRIALS}",
                     "--set", f"train.epochs={EPOCHS}", "--set", "train.train_subset=1000",
                     "--set", "scheduler.grace_period=2", "--set", "scheduler.reduction_factor=2",
                     "--set", "searcher.n_startup_trials=4"])
    finally:
        running.clear()
        watcher.join()
    assert code == 0
    return load_results(str(root / "quick"))


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="reads the listening sockets from Linux's /proc")
def test_the_local_ray_listens_on_loopback_only(quick):
    processes = {process for process, _ in LISTENERS}
    assert {"gcs_server", "raylet"} <= processes, LISTENERS  # the watch saw Ray's daemons
    assert all(ipaddress.ip_address(address.removeprefix("::ffff:")).is_loopback for _, address in LISTENERS), \
        LISTENERS


def test_tables_have_one_row_per_trial_and_per_epoch(quick):
    trials, epochs = quick.trials, quick.epochs
    assert list(trials.columns) == TRIAL_COLUMNS and len(trials) == TRIALS and trials["trial_id"].is_unique
    assert list(epochs.columns) == EPOCH_COLUMNS
    assert len(epochs) == trials["epochs"].sum()
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    for trial_id, curve in epochs.groupby("trial_id"):
        assert list(curve["epoch"]) == list(range(1, len(curve) + 1))
    assert set(trials["status"]) <= {"completed", "stopped"}
    assert (trials.loc[trials["status"] == "completed", "epochs"] == EPOCHS).all()
    assert (trials["final_val_loss"] >= trials["best_val_loss"]).all()


def tune_results(home) -> dict[str, int]:
    """Results Tune received per trial: the lines of each trial's result.json."""
    return {folder.name: len((folder / "result.json").read_text().splitlines())
            for folder in (home / "ray").iterdir() if (folder / "result.json").is_file()}


def test_trials_report_to_tune_only_where_asha_decides(quick):
    """scheduler.report: rungs (the default): grace 2, rf 2, 8 epochs report at epochs 2, 4 and 8 only,
    each result carrying the epochs before it, so the tables and the study still see every epoch."""
    results = tune_results(quick.home)
    assert len(results) == TRIALS
    assert sum(results.values()) / len(quick.epochs) <= 0.5
    for folder, count in results.items():
        (row,) = [r for r in quick.trials.itertuples() if r.trial_id in folder]
        assert count == {2: 1, 4: 2, 8: 3}[row.epochs]


def test_asha_stops_some_trials_early(quick):
    stopped = quick.trials[quick.trials["status"] == "stopped"]
    assert len(stopped) >= 1 and (stopped["epochs"] < EPOCHS).all()


def test_conditional_space_leaves_unused_hyperparameters_empty(quick):
    trials = quick.trials
    for variant, row in trials.set_index("variant").iterrows():
        assert pd.isna(row["noise_factor"]) == (variant != "denoising")
        assert pd.isna(row["sparsity_weight"]) == (variant != "sparse")
    study = optuna.load_study(study_name="quick", storage=open_storage(f"{quick.home}/study.journal", writer=False))
    for trial in study.trials:
        if trial.params.get("variant") != "denoising":
            assert "noise_factor" not in trial.params


def test_study_records_stopped_trials_as_pruned_with_their_curves(quick):
    study = optuna.load_study(study_name="quick", storage=open_storage(f"{quick.home}/study.journal", writer=False))
    by_tune_id = {t.user_attrs["tune_trial_id"]: t for t in study.trials if "tune_trial_id" in t.user_attrs}
    assert len(by_tune_id) == TRIALS
    for row in quick.trials.itertuples():
        trial = by_tune_id[row.trial_id]
        expected = optuna.trial.TrialState.COMPLETE if row.status == "completed" else optuna.trial.TrialState.PRUNED
        assert trial.state == expected and trial.user_attrs["epochs"] == row.epochs
        assert len(trial.intermediate_values) == row.epochs
        assert trial.intermediate_values[row.epochs] == pytest.approx(row.final_val_loss)


def test_best_config_matches_the_best_row(quick):
    completed = quick.trials[quick.trials["status"] == "completed"]
    best = completed.sort_values("final_val_loss").iloc[0]
    assert quick.best_trial == best["trial_id"]
    saved = yaml.safe_load((quick.home / "best_config.yaml").read_text())
    assert saved["variant"] == best["variant"] and saved["latent_dim"] == best["latent_dim"]
    assert saved["lr"] == pytest.approx(best["lr"]) and saved["epochs"] == EPOCHS
    assert quick.best_config.to_dict() == saved


def test_retrain_reproduces_the_best_trials_val_loss(quick, capsys):
    import torch

    threads = torch.get_num_threads()
    assert main(["retrain", str(quick.home)]) == 0
    metrics = yaml.safe_load((quick.home / "retrain" / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    # on the trial's one CPU thread, whatever this process has: the very same sums, the very same loss
    assert metrics["threads"] == 1 and metrics["val_loss"] == metrics["trial_val_loss"]
    assert (quick.home / "retrain" / "model.pt").stat().st_size > 10_000
    assert torch.get_num_threads() == threads
    assert main(["retrain", str(quick.home), "--epochs", "1", "--threads", "2"]) == 0
    assert yaml.safe_load((quick.home / "retrain" / "metrics.json").read_text())["threads"] == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["retrain", str(quick.home), "--threads", "0"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == ("sweep retrain: error: argument --threads: must be >= 1, got 0; "
                                               "`sweep retrain --help` explains")


def test_best_and_analyze_commands(quick, capsys):
    assert main(["best", str(quick.home), "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out) == quick.best_config.to_dict()
    assert main(["analyze", str(quick.home)]) == 0
    out = capsys.readouterr().out
    assert quick.best_trial in out and "best trial of each variant" in out
    assert "CPU-hours" in out and f"until val_loss {quick.best_row()['final_val_loss']:.5f} was first reached" in out


def _tensorboard_scalars(folder, tag: str) -> list[float]:
    """The values logged under `tag` in a folder's TensorBoard event files (TFRecord framing, Event protos)."""
    import struct

    from tensorboardX.proto import event_pb2

    values = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            values += [v.simple_value for v in event.summary.value if v.tag == tag]
    return values


def test_compute_telemetry_is_recorded_for_every_trial_and_epoch(quick):
    for table, columns in ((quick.trials, ["cpu_s", "device_s", "wait_s", "queued_s"]),
                           (quick.epochs, ["cpu_s", "device_s", "wait_s"])):
        values = table[columns].astype(float)
        assert values.notna().all().all() and (values >= 0).all().all(), values
    # A CPU trial holds its cores for each epoch's whole training time.
    per_trial = quick.epochs.groupby("trial_id")["epoch_s"].sum()
    assert quick.trials.set_index("trial_id")["device_s"].to_dict() == pytest.approx(per_trial.to_dict())


def _cpu_share(seconds: float = 1.0) -> float:
    """The share of a core a busy single-threaded process gets on this machine now."""
    wall, cpu = time.monotonic(), time.process_time()
    while time.monotonic() - wall < seconds:
        pass
    return (time.process_time() - cpu) / (time.monotonic() - wall)


def test_a_cpu_trials_cpu_seconds_are_its_training_time(quick):
    """One-thread CPU trials: the process time of the training is at most its epochs' time plus 10%, and,
    where the machine gives a busy process its core, at least three quarters of it: the wall time includes
    the moments the trial waited for a core, which on two cores shared with two trials and Ray's own
    processes took about a tenth (a check after the sweep cannot see them). An epoch uncounted would
    halve a two-epoch trial's ratio."""
    spent = quick.trials.set_index("trial_id")["cpu_s"]
    trained = quick.epochs.groupby("trial_id")["epoch_s"].sum()
    ratios = (spent / trained).to_dict()
    assert all(r <= 1.1 for r in ratios.values()), ratios
    share = _cpu_share()
    if share < 0.95:
        pytest.skip(f"this machine is loaded (a busy process gets {share:.0%} of a core): CPU time cannot match "
                    f"wall time here; CPU / training time per trial: {ratios}")
    assert all(r >= 0.75 for r in ratios.values()), ratios


def test_tensorboard_logs_hold_every_epochs_val_loss(quick):
    """The sweep's TensorBoard logger leaves flushing to tensorboardX; closing a trial's file writes it all."""
    for row in quick.trials.itertuples():
        (folder,) = [f for f in (quick.home / "ray").iterdir() if f.is_dir() and row.trial_id in f.name]
        curve = quick.epochs.loc[quick.epochs["trial_id"] == row.trial_id, "val_loss"]
        assert _tensorboard_scalars(folder, "ray/tune/val_loss") == pytest.approx(list(curve), rel=1e-6)


def test_tables_rebuild_identically_from_rays_folder(quick):
    rebuilt = load_results(str(quick.home), rebuild=True)
    pd.testing.assert_frame_equal(rebuilt.trials.drop(columns="wall_s"), quick.trials.drop(columns="wall_s"))
    assert len(rebuilt.epochs) == len(quick.epochs)
    assert all(math.isfinite(v) for v in rebuilt.epochs["val_loss"])


def test_a_worker_takes_the_shared_dataset_from_ray_once_for_all_its_trials(data_dir, tmp_path, monkeypatch):
    import ray
    import torch

    import sweep.trial
    from aemodels import load_dataset
    from sweep.trial import SharedDataset

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        shared = SharedDataset(load_dataset("mnist", data_dir))
        fetches, real_get = [], ray.get
        monkeypatch.setattr(sweep.trial.ray, "get", lambda ref: fetches.append(ref) or real_get(ref))
        for _ in range(3):  # three trials on one reused worker
            shared.provide(str(tmp_path))
        assert len(fetches) == 1
        # what later trials load under that data_dir is the shared copy: an empty folder, no files read
        provided = load_dataset("mnist", str(tmp_path), download=False)
        assert torch.equal(provided.test_images, load_dataset("mnist", data_dir).test_images)
    finally:
        ray.shutdown()
