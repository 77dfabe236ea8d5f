"""The sweep's Optuna study on disk: a journal file the driver appends to, and older sweeps' SQLite study."""
import errno
import logging
import os
import pickle

import optuna
import pytest
from optuna.trial import TrialState

from sweep.results import _finished_in_study
from sweep.searcher import StudySearch
from sweep.study import LEGACY_STUDY_FILE, STUDY_FILE, open_storage, snapshot_study, study_path
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
    [(status, proposed, params)] = _finished_in_study(tmp_path, SPEC).values()
    assert list(_finished_in_study(tmp_path, SPEC)) == ["old1"] and status == "stopped"
    assert proposed == trial.datetime_start.timestamp()
    (tmp_path / STUDY_FILE).write_text("not a journal\n")  # a journal, once there, is the study
    assert study_path(tmp_path) == tmp_path / STUDY_FILE
    assert _finished_in_study(tmp_path, SPEC) == {}
    assert "cannot read" in capsys.readouterr().out


# ---- the searcher (sweep.searcher.StudySearch over sweep.tpe) ------------------------------------

GRID = parse({"name": "bench", "train": {"epochs": 3}, "searcher": {"n_startup_trials": 4},
              "space": {"variant": {"choice": ["vanilla", "conv", "denoising", "sparse"]},
                        "latent_dim": {"choice": [2, 4, 8, 16, 32, 64]}}})  # 24 configurations in all


def finish(search: StudySearch, trial_id: str, epochs: int = 3, value: float = 0.5) -> None:
    for epoch in range(1, epochs + 1):
        search.on_trial_result(trial_id, {"val_loss": value + 1 / epoch, "epoch": epoch})
    search.on_trial_complete(trial_id, {"val_loss": value + 1 / epochs, "epoch": epochs})


def kill_and_restore(search: StudySearch, saved: str) -> StudySearch:
    """What `sweep resume` does after a driver kill: tuner.pkl unpickled, then the last searcher state restored."""
    resumed = pickle.loads(pickle.dumps(search))
    resumed.restore(saved)
    return resumed


def test_the_searcher_uses_no_private_name_of_ray_or_optuna():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "sweep"
    for name in ("searcher.py", "tpe.py"):
        text = (root / name).read_text()
        assert "_ot_" not in text, name
        assert "OptunaSearch(" not in text and "(OptunaSearch)" not in text, name
        # an attribute starting with _ is read only on our own objects
        others = {m.group(1) for m in re.finditer(r"\b(\w+)\._\w", text)} - {"self"}
        assert others == set(), (name, others)
        assert not re.search(r"^\s*(from|import)\s+(optuna|ray)\S*\._", text, re.MULTILINE), name


def test_each_ended_trial_is_in_the_study_as_today(tmp_path):
    path = tmp_path / STUDY_FILE
    search = searcher(str(path))
    config = search.suggest("t0")
    search.on_trial_result("t0", {"val_loss": 0.9, "epoch": 1})
    search.on_trial_result("t0", {"val_loss": float("nan"), "epoch": 2})
    search.on_trial_complete("t0", {"val_loss": float("nan"), "epoch": 2, "status": "diverged"})
    search.suggest("t1")
    search.on_trial_complete("t1", None, error=True)
    run_trial(search, "t2", 3)
    diverged, failed, completed = read(path).trials
    assert diverged.state == TrialState.PRUNED and diverged.value == 0.9 and diverged.intermediate_values == {1: 0.9}
    assert diverged.user_attrs == {"tune_trial_id": "t0", "status": "diverged", "epochs": 2}
    assert diverged.params == {k: config[k] for k in ("latent_dim", "lr")}
    assert set(diverged.distributions) == {"latent_dim", "lr"} and diverged.distributions["lr"].log
    assert diverged.datetime_start <= diverged.datetime_complete
    assert failed.state == TrialState.FAIL and failed.user_attrs["status"] == "error"
    assert completed.state == TrialState.COMPLETE and len(completed.intermediate_values) == 3


def test_points_come_first_and_a_point_already_tried_is_not_run_again(tmp_path):
    points = ({"latent_dim": 8, "lr": 1e-3}, {"latent_dim": 2, "lr": 1e-4}, {"latent_dim": 8, "lr": 1e-3})
    search = StudySearch(SearchSpace(SPEC.space), SPEC.searcher, str(tmp_path / STUDY_FILE), "bench", 3, points)
    got = [search.suggest(f"t{i}") for i in range(3)]
    assert got[:2] == [{**p, "variant": "vanilla"} for p in points[:2]]  # with the fixed values, as Tune needs
    assert got[2]["lr"] != 1e-3


def test_the_same_seed_gives_the_same_sweep(tmp_path):
    def run(folder):
        search, out = searcher(str(folder / STUDY_FILE)), []
        for i in range(12):
            out.append(search.suggest(f"t{i}"))
            finish(search, f"t{i}", 1 + i % 3, out[-1]["lr"])
        return out

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    assert run(tmp_path / "a") == run(tmp_path / "b")


def test_a_resumed_searcher_does_not_replay_the_proposals_lost_with_the_driver(tmp_path):
    saved = str(tmp_path / "searcher-state.pkl")
    search = searcher(str(tmp_path / STUDY_FILE))
    for i in range(6):
        search.suggest(f"t{i}")
        finish(search, f"t{i}", value=i / 10)
    search.save(saved)
    lost = [search.suggest(f"t{i}") for i in (6, 7, 8)]  # proposed after the save, then the driver died
    resumed = kill_and_restore(search, saved)
    after = [resumed.suggest(f"r{i}") for i in range(3)]
    assert not {p["lr"] for p in after} & {p["lr"] for p in lost}


def test_a_resumed_searcher_does_not_repeat_a_configuration(tmp_path):
    path, saved = tmp_path / STUDY_FILE, str(tmp_path / "searcher-state.pkl")
    search = StudySearch(SearchSpace(GRID.space), GRID.searcher, str(path), "bench", 3)
    for i in range(8):
        search.suggest(f"t{i}")
        finish(search, f"t{i}", value=i / 10)
    running = [search.suggest(f"t{i}") for i in (8, 9)]
    search.save(saved)
    search.suggest("t10")  # lost with the driver
    finish(search, "t8")  # ended after the save: written to the study before the kill
    resumed = kill_and_restore(search, saved)
    finish(resumed, "t9")
    for i in range(13):
        resumed.suggest(f"r{i}")
        finish(resumed, f"r{i}", value=1 - i / 20)
    configs = [tuple(sorted(t.params.items())) for t in read(path).trials]
    assert len(configs) == 23 and len(set(configs)) == 23  # 23 of the 24 configurations: any repeat would show
    assert {tuple(sorted(r.items())) for r in running} <= set(configs)


def test_the_searcher_limits_running_trials_itself(tmp_path):
    from ray.tune.search import ConcurrencyLimiter

    saved = str(tmp_path / "searcher-state.pkl")
    search = searcher(str(tmp_path / STUDY_FILE))
    limiter = ConcurrencyLimiter(search, max_concurrent=2)  # what Tune builds from max_concurrent_trials
    assert search.set_max_concurrency(2) is True
    assert limiter.suggest("t0") and limiter.suggest("t1")
    assert limiter.suggest("t2") is None  # two running: the searcher says wait
    search.save(saved)
    finish(search, "t0")
    assert limiter.suggest("t2")
    # after a driver kill, a trial running at the save that ended since does not hold a slot forever
    resumed = kill_and_restore(search, saved)
    assert resumed.set_max_concurrency(2) is True
    assert resumed.suggest("r0") is not None and resumed.suggest("r1") is None


def test_the_searcher_stops_at_num_samples_by_the_studys_count(tmp_path):
    from ray.tune.search import Searcher

    saved = str(tmp_path / "searcher-state.pkl")
    search = StudySearch(SearchSpace(SPEC.space), SPEC.searcher, str(tmp_path / STUDY_FILE), "bench", 3,
                         num_samples=4)
    for i in range(2):
        search.suggest(f"t{i}")
        finish(search, f"t{i}")
    search.suggest("t2"), search.suggest("t3")
    assert search.suggest("t4") == Searcher.FINISHED
    search.save(saved)
    search.suggest("t9")  # lost with the driver: never counted
    finish(search, "t2"), finish(search, "t3")
    resumed = kill_and_restore(search, saved)  # Ray's own count would start two more trials here
    assert resumed.suggest("r0") == Searcher.FINISHED


def test_resume_refuses_the_searcher_state_of_an_older_aesweep(tmp_path):
    import json

    from sweep.errors import SweepError
    from sweep.experiment import check_resumable

    experiment = tmp_path / "ray"
    experiment.mkdir()
    (experiment / "tuner.pkl").write_bytes(pickle.dumps({}))
    (experiment / "searcher-state-x.pkl").write_bytes(pickle.dumps({"_ot_trial_ids": {}, "_study_name": "bench"}))
    (experiment / "search_gen_state-x.json").write_bytes(pickle.dumps({"counter": 3}))
    (experiment / "experiment_state-x.json").write_text(json.dumps({"trial_data": []}))
    with pytest.raises(SweepError, match="made by an older aesweep.*--overwrite") as info:
        check_resumable(tmp_path)
    assert "\n" not in str(info.value)
    search = searcher(str(tmp_path / STUDY_FILE))
    search.save(str(experiment / "searcher-state-x.pkl"))
    check_resumable(tmp_path)


def test_a_result_carrying_earlier_epochs_gives_the_study_every_intermediate_value(tmp_path):
    """Trials report at ASHA's rungs only; each result carries the epochs since the one before."""
    from sweep.epochs import CARRIED

    path = tmp_path / STUDY_FILE
    search = searcher(str(path))
    config = search.suggest("t0")
    curve = {epoch: config["lr"] + 1 / epoch for epoch in (1, 2, 3)}
    search.on_trial_result("t0", {"val_loss": curve[1], "epoch": 1, CARRIED: []})
    search.on_trial_complete("t0", {"val_loss": curve[3], "epoch": 3,
                                    CARRIED: [{"val_loss": curve[2], "epoch": 2}]})
    (trial,) = read(path).trials
    assert trial.state == TrialState.COMPLETE and trial.intermediate_values == pytest.approx(curve)


def test_drivers_sharing_a_study_learn_each_others_trials_and_keep_their_own_budgets(tmp_path, monkeypatch):
    """Two drivers of one sweep (sweep.drivers): each runs its own share of trials from its own stream,
    and its TPE takes in the other's finished trials; the shared journal takes Optuna's lock file."""
    from sweep.drivers import share

    assert [share(10, 3, k) for k in range(3)] == [4, 3, 3] and sum(share(7, 7, k) for k in range(7)) == 7
    from optuna.storages.journal import JournalFileSymlinkLock

    monkeypatch.setattr(StudySearch, "SYNC_S", 0.0)
    locked = []
    acquire = JournalFileSymlinkLock.acquire
    monkeypatch.setattr(JournalFileSymlinkLock, "acquire", lambda lock: locked.append(1) or acquire(lock))
    url = str(tmp_path / STUDY_FILE)
    first, second = (StudySearch(SearchSpace(SPEC.space), SPEC.searcher, url, "bench", 3, num_samples=3,
                                 driver=k, drivers=2) for k in (0, 1))
    assert first.suggest("a0") != second.suggest("b0")  # two seeds: not the same first proposal
    first.on_trial_complete("a0", {"val_loss": 0.5, "epoch": 3})
    second.on_trial_complete("b0", {"val_loss": 0.4, "epoch": 1})
    assert first.others() == (1, 1) and second.others() == (1, 3)
    tried = {tuple(sorted(t.params.items())) for t in read(url).trials}
    assert tried <= first._tried and tried <= second._tried  # neither proposes the other's trial again
    for i in range(1, 3):
        run_trial(first, f"a{i}", 3)
    assert first.suggest("a3") == StudySearch.FINISHED  # its own 3, whatever the other has run
    assert second.suggest("b1") is not None
    study = read(url)
    assert sorted(t.user_attrs["driver"] for t in study.trials) == [0, 0, 0, 1]
    assert len(locked) >= 4 and not (tmp_path / f"{STUDY_FILE}.lock").exists()  # taken and released per append
