"""What a trial hands Tune at each epoch: a complete checkpoint folder, and no scratch left behind."""
import json
import shutil

import pytest

import sweep.trial as trial_mod
from sweep.epochs import epoch_rows
from aemodels import TrainState, train


@pytest.fixture
def persisted(monkeypatch, tmp_path):
    """tune.report replaced by what Ray does with a checkpoint: copy its folder to the trial's storage."""
    copies = []

    def report(metrics, checkpoint=None):
        target = tmp_path / "storage" / f"checkpoint_{len(copies):06d}"
        if checkpoint is not None:
            shutil.copytree(checkpoint.path, target)
        copies.append((metrics, target if checkpoint is not None else None, checkpoint))

    monkeypatch.setattr(trial_mod.tune, "report", report)
    return copies


def test_each_epoch_gets_its_own_complete_checkpoint_and_the_scratch_is_emptied(tmp_path, small, persisted):
    states = []
    train(small(epochs=3), checkpoint=states.append)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    record = trial_mod.TrialRecord(str(scratch))
    for state in states:
        record.report(state.history[-1], lambda path, state=state: state.save(path, durable=False))
        assert list(scratch.iterdir()) == []  # Ray has its copy; nothing accumulates in the worker's /tmp
    record.report({"epoch": 4, "val_loss": 0.5}, None)  # a report without a state carries no checkpoint

    folders = [checkpoint.path for _, _, checkpoint in persisted[:3]]
    assert len(set(folders)) == 3  # never a file written over the last epoch's (see TrialRecord.report)
    for (metrics, copy, _), state in zip(persisted, states):
        assert metrics["epoch"] == state.epoch
        saved = TrainState.load(copy / trial_mod.STATE_FILE)
        assert saved.epoch == state.epoch and saved.model.keys() == state.model.keys()
        assert all((saved.model[k] == state.model[k]).all() for k in state.model)
        history = json.loads((copy / trial_mod.HISTORY_FILE).read_text())
        assert [row["epoch"] for row in history] == list(range(1, state.epoch + 1))
    assert persisted[3][1] is None


def test_the_epoch_folder_goes_even_when_tune_ends_the_trial_inside_report(tmp_path, small, monkeypatch):
    def stopped(metrics, checkpoint=None):
        raise SystemExit  # how Tune's session ends a stopped trial's thread while it waits in report

    monkeypatch.setattr(trial_mod.tune, "report", stopped)
    states = []
    train(small(epochs=1), checkpoint=states.append)
    record = trial_mod.TrialRecord(str(tmp_path))
    with pytest.raises(SystemExit):
        record.report(states[0].history[-1], lambda path: states[0].save(path, durable=False))
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def ram_and_disk(tmp_path, monkeypatch):
    """A stand-in for /dev/shm and for the temp folder, both empty."""
    ram, disk = tmp_path / "ram", tmp_path / "disk"
    ram.mkdir()
    disk.mkdir()
    monkeypatch.setattr(trial_mod, "RAM_FOLDER", str(ram))
    monkeypatch.setattr(trial_mod.tempfile, "tempdir", str(disk))
    return ram, disk


def test_checkpoints_are_staged_in_ram_while_it_has_room(ram_and_disk, persisted, monkeypatch):
    ram, disk = ram_and_disk
    written = []
    record = trial_mod.TrialRecord()
    monkeypatch.setattr(trial_mod, "RAM_HEADROOM", 0)
    record.report({"epoch": 1}, lambda path: written.append(path) or path.write_bytes(b"state"))
    monkeypatch.setattr(trial_mod, "RAM_HEADROOM", 1 << 62)  # more than any machine has free
    record.report({"epoch": 2}, lambda path: written.append(path) or path.write_bytes(b"state"))
    assert [p.parent.parent for p in written] == [ram, disk]
    assert [(copy / trial_mod.STATE_FILE).read_bytes() for _, copy, _ in persisted] == [b"state", b"state"]
    assert list(ram.iterdir()) == [] and list(disk.iterdir()) == []


def test_a_checkpoint_that_fills_the_ram_folder_is_staged_on_disk(ram_and_disk, persisted, monkeypatch, caplog):
    import errno

    ram, disk = ram_and_disk
    monkeypatch.setattr(trial_mod, "RAM_HEADROOM", 0)

    def write(path):
        if path.is_relative_to(ram):
            path.write_bytes(b"half a st")
            raise OSError(errno.ENOSPC, "No space left on device")
        path.write_bytes(b"state")

    with caplog.at_level("WARNING"):
        trial_mod.TrialRecord().report({"epoch": 1}, write)
    assert (persisted[0][1] / trial_mod.STATE_FILE).read_bytes() == b"state"
    assert "is full" in caplog.text and "on disk" in caplog.text
    assert list(ram.iterdir()) == [] and list(disk.iterdir()) == []


def test_other_write_errors_fail_the_report_and_leave_nothing(ram_and_disk, persisted, monkeypatch):
    ram, disk = ram_and_disk
    monkeypatch.setattr(trial_mod, "RAM_HEADROOM", 0)

    def write(path):
        path.write_bytes(b"half")
        raise PermissionError("denied")

    with pytest.raises(PermissionError):
        trial_mod.TrialRecord().report({"epoch": 1}, write)
    assert persisted == []
    assert list(ram.iterdir()) == [] and list(disk.iterdir()) == []


def test_a_new_trial_removes_checkpoints_left_in_ram_by_processes_that_died(ram_and_disk):
    import os
    import subprocess
    import sys

    ram, _ = ram_and_disk
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    for name in (f"aesweep-epoch-{dead}-abc", f"aesweep-epoch-{os.getpid()}-abc", "aesweep-epoch-x-abc", "ray-objects"):
        (ram / name).mkdir()
        (ram / name / "state.pt").write_bytes(b"13 MB, say")
    trial_mod.TrialRecord()
    assert sorted(p.name for p in ram.iterdir()) == sorted([f"aesweep-epoch-{os.getpid()}-abc", "aesweep-epoch-x-abc",
                                                             "ray-objects"])


def _state_writer(path):
    path.write_bytes(b"state")


def test_rung_reporting_sends_rung_epochs_carrying_the_ones_between(persisted):
    record = trial_mod.TrialRecord(reporting=trial_mod.Reporting((2, 4, 8), checkpoint_every_s=3600))
    for epoch in range(1, 9):
        status = "completed" if epoch == 8 else "running"
        record.report({"epoch": epoch, "val_loss": 1 / epoch, "status": status}, _state_writer)
    assert [m["epoch"] for m, _, _ in persisted] == [2, 4, 8]
    assert [[r["epoch"] for r in m[trial_mod.CARRIED]] for m, _, _ in persisted] == [[1], [3], [5, 6, 7]]
    assert all(copy is not None for _, copy, _ in persisted)  # every report carries the state
    expanded = [row["epoch"] for m, _, _ in persisted for row in epoch_rows(m)]
    assert expanded == list(range(1, 9))
    history = json.loads((persisted[-1][1] / trial_mod.HISTORY_FILE).read_text())
    assert [row["epoch"] for row in history] == list(range(1, 9))


def test_a_diverged_epoch_is_reported_at_once_between_rungs(persisted):
    record = trial_mod.TrialRecord(reporting=trial_mod.Reporting((4, 8), checkpoint_every_s=3600))
    record.report({"epoch": 1, "val_loss": 1.0, "status": "running"}, _state_writer)
    record.report({"epoch": 2, "val_loss": float("nan"), "status": "diverged"}, None)
    assert [(m["epoch"], [r["epoch"] for r in m[trial_mod.CARRIED]]) for m, _, _ in persisted] == [(2, [1])]


def test_a_checkpoint_falls_due_between_rungs_after_checkpoint_every_s(persisted, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(trial_mod.time, "monotonic", lambda: clock[0])
    record = trial_mod.TrialRecord(reporting=trial_mod.Reporting((8,), checkpoint_every_s=10))
    for epoch in range(1, 8):
        clock[0] += 4  # an epoch takes 4 s: a checkpoint every third epoch (12 s >= 10 s)
        record.report({"epoch": epoch, "val_loss": 1.0, "status": "running"}, _state_writer)
    assert [m["epoch"] for m, _, _ in persisted] == [3, 6]
    assert all(copy is not None for _, copy, _ in persisted)


def test_epoch_reporting_sends_every_epoch(persisted):
    record = trial_mod.TrialRecord(reporting=trial_mod.Reporting(None))
    for epoch in range(1, 4):
        record.report({"epoch": epoch, "val_loss": 1.0, "status": "running"}, _state_writer)
    assert [(m["epoch"], m[trial_mod.CARRIED]) for m, _, _ in persisted] == [(1, []), (2, []), (3, [])]
