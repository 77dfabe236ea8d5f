"""Ray's experiment state cut short by a crash: Ray copies its state files into the experiment folder in
place, so a driver killed mid-copy leaves one truncated. The driver keeps complete copies; a resume puts
one back, and the tables read the trials from the copy and their own folders. No Ray is started here."""
import json
import os
import pickle

import pytest

from sweep.errors import SweepError
from sweep.experiment import (check_resumable, complete, keep_state, kept_dir, mend_state, read_experiment,
                              restorable)

STATE = "experiment_state-2026-12-04_10-00-00.json"
OLDER = "experiment_state-2026-12-03_10-00-00.json"


def trial_folder(experiment, trial_id, epochs, done=True, error=None):
    """A trial's folder as Ray writes it: params.json, a result.json row per epoch, error.txt if it failed."""
    folder = experiment / f"run_trial_{trial_id}_1_lr=0.001_2026-12-04_10-00-00"
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps({"variant": "vanilla", "lr": 0.001}))
    rows = [{"epoch": e, "val_loss": 1.0 / e, "train_loss": 1.0 / e, "trial_id": trial_id,
             "done": done and e == epochs} for e in range(1, epochs + 1)]
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if error:
        (folder / "error.txt").write_text(f"Traceback\n{error}\n")
    return folder


def state_of(experiment, trials: dict[str, str]) -> bytes:
    """An experiment_state file listing `trials` (id -> Ray status), in Ray's layout."""
    data = [[json.dumps({"trial_id": t, "config": {"variant": "vanilla", "lr": 0.001}, "status": status,
                         "relative_logdir": next(experiment.glob(f"*_{t}_*")).name}),
             json.dumps({"num_failures": 0, "last_result": {}, "error_filename": None})]
            for t, status in trials.items()]
    return json.dumps({"trial_data": data, "runner_data": {}, "stats": {}}).encode()


@pytest.fixture
def experiment(tmp_path):
    """Trial a ended before the kept copy was made; b ended after it, c failed after it; then the driver
    died while Ray was copying its newest state into the folder."""
    experiment = tmp_path / "ray"
    trial_folder(experiment, "a", 2)
    keep_state_of(experiment, state_of(experiment, {"a": "TERMINATED"}))
    trial_folder(experiment, "b", 3)
    trial_folder(experiment, "c", 1, done=False, error="ValueError: lr too large")
    newest = state_of(experiment, {"a": "TERMINATED", "b": "TERMINATED", "c": "ERROR"})
    (experiment / STATE).write_bytes(newest[: len(newest) // 2])
    return experiment


def keep_state_of(experiment, data: bytes) -> None:
    (experiment / STATE).write_bytes(data)
    keep_state(experiment, {})


def test_a_state_file_cut_anywhere_is_incomplete():
    document = json.dumps({"trial_data": [["{}", "{}"]], "runner_data": {"x": [1, 2.5, "é"]}}).encode()
    pickled = pickle.dumps({"counter": 3, "trials": list(range(300)), "name": "x" * 500}, protocol=5)
    for name, data in ((STATE, document), ("searcher-state-x.pkl", pickled), ("search_gen_state-x.json", pickled)):
        assert complete(data, name)
        assert not any(complete(data[:cut], name) for cut in range(len(data)))


def test_the_kept_copy_is_the_last_complete_one(tmp_path):
    experiment = tmp_path / "ray"
    experiment.mkdir()
    versions: dict = {}
    first, second = (json.dumps({"trial_data": [], "n": n}).encode() for n in (1, 22))
    (experiment / STATE).write_bytes(first)
    keep_state(experiment, versions)
    assert (kept_dir(experiment) / STATE).read_bytes() == first
    (experiment / STATE).write_bytes(second[:-3])  # caught mid-copy: not kept
    keep_state(experiment, versions)
    assert (kept_dir(experiment) / STATE).read_bytes() == first
    (experiment / STATE).write_bytes(second)
    keep_state(experiment, versions)
    assert (kept_dir(experiment) / STATE).read_bytes() == second
    assert sorted(p.name for p in experiment.parent.glob("ray*")) == ["ray"]  # hidden from the sweep's globs


def test_the_tables_read_a_cut_short_state_from_the_kept_copy_and_the_trials_folders(experiment, capsys):
    records = {r["trial_id"]: r for r in read_experiment(experiment)}
    assert sorted(records) == ["a", "b", "c"]
    assert [records[t]["ray_status"] for t in "abc"] == ["TERMINATED", "TERMINATED", "ERROR"]
    assert [len(records[t]["rows"]) for t in "abc"] == [2, 3, 1]
    assert records["c"]["error"] == "ValueError: lr too large"
    assert "cut short by a crash" in capsys.readouterr().out
    for path in kept_dir(experiment).iterdir():  # no copy kept: every trial from its own folder
        path.unlink()
    records = {r["trial_id"]: r for r in read_experiment(experiment)}
    assert [records[t]["ray_status"] for t in "abc"] == ["TERMINATED", "TERMINATED", "ERROR"]


def test_a_resume_puts_back_the_kept_copy(experiment):
    kept = (kept_dir(experiment) / STATE).read_bytes()
    os.chmod(experiment / STATE, 0o644)
    # What Ray will restore, as `sweep best` judges whether `sweep resume` can go on, before anything is written
    assert restorable(experiment, [experiment / STATE]) == kept_dir(experiment) / STATE
    lines = mend_state(experiment)
    assert len(lines) == 1 and "put back from the copy kept at" in lines[0]
    assert (experiment / STATE).read_bytes() == kept
    assert (experiment / STATE).stat().st_mode & 0o777 == 0o644  # as Ray made it
    assert mend_state(experiment) == []  # complete now: nothing more to do


def test_without_a_copy_a_resume_sets_the_cut_file_aside_for_rays_older_snapshot(experiment, capsys):
    (experiment / OLDER).write_bytes(state_of(experiment, {"a": "TERMINATED"}))
    for path in kept_dir(experiment).iterdir():
        path.unlink()
    lines = mend_state(experiment)
    assert len(lines) == 1 and f"so Ray restores {OLDER}" in lines[0]
    assert sorted(p.name for p in experiment.glob("experiment_state-*")) == [OLDER, STATE + ".cut-short"]
    # The tables still count b and c, which the older snapshot lacks.
    assert sorted(r["trial_id"] for r in read_experiment(experiment)) == ["a", "b", "c"]


def test_with_no_complete_state_left_a_resume_is_refused_in_one_line(experiment):
    for path in kept_dir(experiment).iterdir():
        path.unlink()
    (experiment / "tuner.pkl").write_bytes(pickle.dumps({}))
    with pytest.raises(SweepError, match="cut short by a crash and no complete copy of it is left.*--overwrite") as info:
        check_resumable(experiment.parent, mend=True)
    assert "\n" not in str(info.value)
    assert os.path.exists(experiment / (STATE + ".cut-short"))


def test_a_finished_trial_that_rays_state_lists_without_a_result_is_ended_with_its_last_row(tmp_path):
    from sweep.experiment import restart_ends

    experiment = tmp_path / "ray"
    for trial_id in "abc":
        trial_folder(experiment, trial_id, 2)
    data = json.loads(state_of(experiment, {"a": "RUNNING", "b": "RUNNING", "c": "TERMINATED"}))
    trial, runtime = data["trial_data"][1]
    data["trial_data"][1][1] = json.dumps({**json.loads(runtime), "last_result": {"epoch": 2, "val_loss": 0.5}})
    (experiment / STATE).write_text(json.dumps(data))
    ends = restart_ends(read_experiment(experiment), ["a", "b", "c"])
    # a: Ray restarts it with no result, so Tune is handed its last epoch; b: Tune has its result; c: not restarted
    assert ends["a"]["epoch"] == 2 and ends["a"]["val_loss"] == 0.5 and ends["b"] is None and ends["c"] is None


def test_a_finished_trial_whose_driver_died_before_ray_copied_its_files_is_read_from_its_checkpoints(tmp_path):
    # Ray copies params.json and result.json from its staging folder with each snapshot; the trial wrote its
    # checkpoint itself. The study, which saw the trial end, has its parameters.
    from sweep.experiment import trial_folder_record

    experiment = tmp_path / "ray"
    checkpoint = experiment / "run_trial_d4_4_latent_dim=30_2026-12-04_23-02-38" / "checkpoint_000000"
    checkpoint.mkdir(parents=True)
    rows = [{"epoch": 1, "val_loss": 0.2, "train_loss": 0.3, "status": "stopped"}]
    (checkpoint / "history.json").write_text(json.dumps(rows))
    params = {"variant": "vanilla", "latent_dim": 30, "lr": 0.0002}

    record = trial_folder_record(experiment, "d4", "stopped", params)

    assert record["config"] == params and record["rows"] == rows and record["last_result"] == rows[0]
    assert record["study_status"] == "stopped" and record["error"] is None
    assert trial_folder_record(experiment, "e5", "stopped", params) is None  # no folder: nothing to read
    (checkpoint / "history.json").unlink()
    assert trial_folder_record(experiment, "d4", "stopped", params) is None  # no rows anywhere
