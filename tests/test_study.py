"""The sweep's Optuna study on disk: a journal file the driver appends to, and older sweeps' SQLite study."""
import errno
import logging
import os
import pickle

import optuna
import pytest
from optuna.trial import TrialState

from sweep.results import _finished_in_study
from sweep.searcher import LEGACY_STUDY_FILE, STUDY_FILE, StudySearch, open_storage, snapshot_study, study_path
from sweep.space import SearchSpace
from sweep.spec import parse

SPEC = parse({"name": "bench", "train": {"epochs": 3}, "searcher": {"n_startup_trials": 2},
              "space": {"latent_dim": {"choice": [2, 8, 16]}, "lr": {"loguniform": [1e-4, 1e-2]}}})
TORN = b'{"op_code":5,"worker_id":"w","trial_id":4,"st'  # a line cut short: the driver died mid-append


def searcher(url: str) -> StudySearch:
    return StudySearch(SearchSpace(SPEC.space), SPEC.searcher, url, "bench", 3)


def run_trial(search: StudySearch, trial_id: str, epochs: int) -> None:
    config = search.suggest(trial_id)
    for epoch in range(1, epochs + 1):
        search.on_trial_result(trial_id, {"val_loss": config["lr"] + 1 / epoch, "epoch": epoch})
    search.on_trial_complete(trial_id, {"val_loss": config["lr"] + 1 / epochs, "epoch": epochs})


def read(path) -> optuna.Study:
    return optuna.load_study(study_name="bench", storage=open_storage(str(path), writer=False))


def test_the_study_is_a_journal_with_every_trials_end_and_curve(tmp_path, monkeypatch):
    path = tmp_path / STUDY_FILE
    search = searcher(str(path))
    synced = []
    monkeypatch.setattr(os, "fsync", synced.append)  # the driver's thread never waits on the disk
    for i, epochs in enumerate([3, 1, 3, 2]):
        run_trial(search, f"t{i}", epochs)
    assert synced == []
    study = read(path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE,
                                               TrialState.PRUNED]
    assert [len(t.intermediate_values) for t in study.trials] == [3, 1, 3, 2]
    assert [t.user_attrs["tune_trial_id"] for t in study.trials] == ["t0", "t1", "t2", "t3"]
    assert study_path(tmp_path) == path


def test_a_torn_journal_write_is_cut_before_the_study_is_written_again(tmp_path, caplog):
    path = tmp_path / STUDY_FILE
    search = searcher(str(path))
    for i in range(3):
        run_trial(search, f"t{i}", 3)
    with open(path, "ab") as fh:
        fh.write(TORN)
    with caplog.at_level(logging.WARNING, logger="sweep.searcher"):
        resumed = pickle.loads(pickle.dumps(search))  # what Ray's restore does: the searcher reopens the study
    assert "torn write" in caplog.text
    run_trial(resumed, "t3", 3)
    run_trial(resumed, "t4", 1)
    study = read(path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4 + [TrialState.PRUNED]
    assert study.trials[4].user_attrs["tune_trial_id"] == "t4"


def test_a_write_cut_short_by_a_full_disk_leaves_no_half_line_and_the_trial_is_written_later(tmp_path, monkeypatch,
                                                                                              caplog):
    path = tmp_path / STUDY_FILE
    search = searcher(str(path))
    run_trial(search, "t0", 3)
    real_write = os.write

    def full_disk(fd, data):  # half the bytes go out, then the disk is full
        real_write(fd, bytes(data[:len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with caplog.at_level(logging.WARNING, logger="sweep.searcher"):
        run_trial(search, "t1", 3)  # the study is written when a trial ends: the sweep goes on
    assert "No space left" in caplog.text
    monkeypatch.setattr(os, "write", real_write)
    assert path.read_bytes().endswith(b"\n")
    run_trial(search, "t2", 3)  # space again: t1, kept by the searcher, is written before t2
    trials = read(path).trials
    assert [t.user_attrs["tune_trial_id"] for t in trials] == ["t0", "t1", "t2"]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 and len(trials[1].intermediate_values) == 3


def test_a_snapshot_of_the_journal_holds_whole_lines_only(tmp_path):
    path = tmp_path / STUDY_FILE
    search = searcher(str(path))
    run_trial(search, "t0", 3)
    with open(path, "ab") as fh:
        fh.write(TORN)
    snapshot_study(str(path), str(tmp_path / "copy.journal"))
    copy = (tmp_path / "copy.journal").read_bytes()
    assert copy.endswith(b"\n") and path.read_bytes() == copy + TORN
    assert [t.state for t in read(tmp_path / "copy.journal").trials] == [TrialState.COMPLETE]


def test_reading_a_missing_journal_is_an_error_that_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no study journal"):
        open_storage(str(tmp_path / STUDY_FILE), writer=False)
    assert list(tmp_path.iterdir()) == []


def test_an_older_sweeps_sqlite_study_is_still_read(tmp_path, capsys):
    study = optuna.create_study(study_name="bench", storage=f"sqlite:///{tmp_path / LEGACY_STUDY_FILE}")
    trial = study.ask()
    trial.set_user_attr("tune_trial_id", "old1")
    trial.set_user_attr("status", "stopped")
    study.tell(trial, state=TrialState.PRUNED)
    assert study_path(tmp_path) == tmp_path / LEGACY_STUDY_FILE
    assert _finished_in_study(tmp_path, SPEC) == {"old1": "stopped"}
    (tmp_path / STUDY_FILE).write_text("not a journal\n")  # a journal, once there, is the study
    assert study_path(tmp_path) == tmp_path / STUDY_FILE
    assert _finished_in_study(tmp_path, SPEC) == {}
    assert "cannot read" in capsys.readouterr().out
