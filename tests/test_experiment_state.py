"""Ray's experiment state and a crash: Ray copies its state files into the experiment folder in place, so
the sweep has it write through sweep.storage.WholeFiles, and a driver killed mid-copy leaves the file before
whole. A folder with a cut-short file anyway is read from its older snapshot and the trials' own folders,
and a resume is refused in one line. No Ray is started here."""
import json
import os
import pickle
import subprocess
import sys

import pytest

from sweep.errors import SweepError
from sweep.experiment import check_resumable, complete, read_experiment, state_files

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
    """Trial a ended before Ray's older snapshot; b ended after it, c failed after it; then the newest state
    file was cut short (copied by hand, a full disk)."""
    experiment = tmp_path / "ray"
    trial_folder(experiment, "a", 2)
    (experiment / OLDER).write_bytes(state_of(experiment, {"a": "TERMINATED"}))
    trial_folder(experiment, "b", 3)
    trial_folder(experiment, "c", 1, done=False, error="ValueError: lr too large")
    newest = state_of(experiment, {"a": "TERMINATED", "b": "TERMINATED", "c": "ERROR"})
    (experiment / STATE).write_bytes(newest[: len(newest) // 2])
    (experiment / "tuner.pkl").write_bytes(pickle.dumps({}))
    return experiment


def test_a_state_file_cut_anywhere_is_incomplete():
    document = json.dumps({"trial_data": [["{}", "{}"]], "runner_data": {"x": [1, 2.5, "é"]}}).encode()
    pickled = pickle.dumps({"counter": 3, "trials": list(range(300)), "name": "x" * 500}, protocol=5)
    for name, data in ((STATE, document), ("searcher-state-x.pkl", pickled), ("search_gen_state-x.json", pickled)):
        assert complete(data, name)
        assert not any(complete(data[:cut], name) for cut in range(len(data)))


KILLED_MID_COPY = """
import os, sys
import pyarrow.fs as pafs
from sweep.storage import ray_filesystem
source, target = sys.argv[1:]
fs = ray_filesystem(None)
pafs.copy_files(source, target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
out = fs.open_output_stream(target)  # Ray's next snapshot, its copy killed halfway
data = open(source, "rb").read().replace(b"{}", b'{"epoch": 2}')
out.write(data[: len(data) // 2])
out.flush()
os._exit(9)
"""


def test_a_driver_killed_while_ray_copies_its_state_leaves_the_file_before_whole(tmp_path):
    experiment = tmp_path / "ray"
    experiment.mkdir()
    source = tmp_path / "staging.json"
    source.write_bytes(json.dumps({"trial_data": [["{}", "{}"]] * 2000}).encode())
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_COPY, str(source), str(experiment / STATE)])

    assert proc.returncode == 9
    assert (experiment / STATE).read_bytes() == source.read_bytes()  # the first copy, whole
    assert (experiment / STATE).stat().st_mode & 0o777 == 0o666 & ~_umask()  # as a plain open makes it
    left = [p.name for p in experiment.iterdir() if p.name != STATE]
    assert len(left) == 1 and left[0].startswith(f".{STATE}.")  # the cut copy, hidden from Ray's globs
    assert state_files(experiment) == [experiment / STATE] and list(experiment.glob("experiment_state-*")) == \
        [experiment / STATE]

KILLED_MID_RECOPY = """
import os, sys
import pyarrow.fs as pafs
from sweep.storage import ray_filesystem
folder, target = sys.argv[1:]
fs = ray_filesystem(None)
pafs.copy_files(folder, target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
params, rows = (open(os.path.join(folder, name), "rb").read() for name in ("params.json", "result.json"))
streams = []  # Ray's next snapshot, killed before either copy is done
for name, data in (("params.json", params), ("result.json", rows + b'{"epoch": 3}\\n')):
    streams.append(fs.open_output_stream(os.path.join(target, name)))
    streams[-1].write(data[: len(data) // 3])
    streams[-1].flush()
os._exit(9)
"""


def test_a_driver_killed_while_ray_copies_a_trials_files_again_leaves_them_as_they_were(tmp_path):
    """Ray copies a trial's params.json and its growing result.json again with each snapshot: a kill in
    the middle of a copy leaves neither shorter than before (a finished trial's params.json empty would
    leave it unreadable)."""
    staging = trial_folder(tmp_path / "staging", "a", 2)
    target = tmp_path / "ray" / staging.name
    target.mkdir(parents=True)  # as Ray makes the folder before it copies into it
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_RECOPY, str(staging), str(target)])

    assert proc.returncode == 9
    assert json.loads((target / "params.json").read_text()) == json.loads((staging / "params.json").read_text())
    assert (target / "result.json").read_bytes() == (staging / "result.json").read_bytes()


def test_every_file_ray_copies_into_a_sweeps_folder_arrives_byte_for_byte(tmp_path):
    """Ray's snapshot copy of a staging folder, twice (the second over the first, as each snapshot does):
    state files and trials' files, a name that looks compressed included, land unchanged, and nothing
    else appears."""
    import pyarrow.fs as pafs

    from sweep.storage import ray_filesystem

    staging = tmp_path / "staging"
    files = {STATE: json.dumps({"trial_data": []}).encode(), "tuner.pkl": pickle.dumps({"a": 1}),
             "run_trial_a/result.json": b'{"epoch": 1}\n', "run_trial_a/artifact.csv.gz": os.urandom(300),
             "run_trial_a/events.out.tfevents.1.host": os.urandom(200)}
    for name, data in files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(data)
    target = tmp_path / "ray"
    for _ in range(2):
        pafs.copy_files(str(staging), str(target), destination_filesystem=ray_filesystem(None))
    landed = {p.relative_to(target).as_posix(): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert landed == files



def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_the_tables_read_a_cut_short_state_from_the_older_snapshot_and_the_trials_folders(experiment, capsys):
    records = {r["trial_id"]: r for r in read_experiment(experiment)}
    assert sorted(records) == ["a", "b", "c"]
    assert [records[t]["ray_status"] for t in "abc"] == ["TERMINATED", "TERMINATED", "ERROR"]
    assert [len(records[t]["rows"]) for t in "abc"] == [2, 3, 1]
    assert records["c"]["error"] == "ValueError: lr too large"
    assert "cut short by a crash" in capsys.readouterr().out
    (experiment / OLDER).unlink()  # no snapshot left: every trial from its own folder
    records = {r["trial_id"]: r for r in read_experiment(experiment)}
    assert [records[t]["ray_status"] for t in "abc"] == ["TERMINATED", "TERMINATED", "ERROR"]


def test_a_resume_of_a_cut_short_state_is_refused_in_one_line_that_says_what_to_move(experiment):
    before = {p.name: p.read_bytes() for p in experiment.iterdir() if p.is_file()}
    with pytest.raises(SweepError, match=f"{STATE} is cut short.*move it out of .* so that Ray resumes from {OLDER}"
                                         ".*--overwrite") as info:
        check_resumable(experiment.parent)
    assert "\n" not in str(info.value)
    (experiment / OLDER).unlink()
    del before[OLDER]
    with pytest.raises(SweepError, match="cut short and no complete one is left.*--overwrite") as info:
        check_resumable(experiment.parent)
    assert "\n" not in str(info.value)
    assert {p.name: p.read_bytes() for p in experiment.iterdir() if p.is_file()} == before  # nothing written


def test_a_finished_trial_that_rays_state_lists_without_a_result_is_ended_with_its_last_row(tmp_path):
    from sweep.experiment import restart_ends

    experiment = tmp_path / "ray"
    for trial_id in "abcd":
        trial_folder(experiment, trial_id, 2)
    data = json.loads(state_of(experiment, {"a": "RUNNING", "b": "RUNNING", "c": "TERMINATED", "d": "RUNNING"}))
    for at, last_result in ((1, {"epoch": 2, "val_loss": 0.5, "training_iteration": 1, "trial_id": "b"}),
                            (3, {"trial_id": "d", "pid": 4242, "hostname": "vm", "date": "2026-12-05_14-22-07",
                                 "config": {"variant": "vanilla", "lr": 0.001}})):
        runtime = json.loads(data["trial_data"][at][1])
        data["trial_data"][at][1] = json.dumps({**runtime, "last_result": last_result})
    (experiment / STATE).write_text(json.dumps(data))
    ends = restart_ends(read_experiment(experiment), ["a", "b", "c", "d"])
    # a: Ray restarts it with no result, so Tune is handed its last epoch; b: Tune has its result; c: not
    # restarted; d: Tune's state holds only the keys it fills in before a trial's first report, no metric
    assert ends["a"]["epoch"] == 2 and ends["a"]["val_loss"] == 0.5 and ends["b"] is None and ends["c"] is None
    assert ends["d"]["epoch"] == 2 and ends["d"]["val_loss"] == 0.5


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
