"""Every bad input through the `sweep` command: exit status 2, one line on stderr, no traceback, nothing written."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cli_calls import assert_refused, run_cli
from sweep.cli import main

TINY = {"name": "tiny", "train": {"epochs": 2, "train_subset": 500},
        "space": {"latent_dim": {"choice": [2, 4]}, "lr": {"loguniform": [1.0e-3, 1.0e-2]}}, "num_samples": 2}


@pytest.fixture
def sweep_file(tmp_path, data_dir):
    def write(content=None, text=None, name="s.yaml"):
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        else:
            path.write_text(yaml.safe_dump({**TINY, "storage_path": str(tmp_path / "results"), **(content or {})}))
        return path
    return write


@pytest.fixture
def finished_sweep(tmp_path, data_dir, monkeypatch):
    """results/tiny as a finished sweep leaves it, written by hand (no Ray): sweep.yaml, the tables, best_config.yaml."""
    from sweep.results import TRIAL_COLUMNS
    from sweep.spec import parse

    monkeypatch.chdir(tmp_path)
    home = tmp_path / "results" / "tiny"
    home.mkdir(parents=True)
    spec = parse({**TINY, "storage_path": str(tmp_path / "results"), "data_dir": data_dir})
    (home / "sweep.yaml").write_text(yaml.safe_dump({"sweep": spec.to_dict(), "meta": {"command": "sweep run s.yaml"}}))
    row = {"trial_id": "t1", "variant": "vanilla", "latent_dim": 2, "lr": 0.003, "status": "completed", "epochs": 2,
           "best_val_loss": 0.06, "final_val_loss": 0.06, "final_train_loss": 0.065, "num_failures": 0}
    pd.DataFrame([row], columns=TRIAL_COLUMNS).to_parquet(home / "trials.parquet", index=False)
    pd.DataFrame([{"trial_id": "t1", "epoch": e, "train_loss": 0.07, "val_loss": 0.06} for e in (1, 2)]).to_parquet(
        home / "epochs.parquet", index=False)
    best = spec.train_config({"variant": "vanilla", "latent_dim": 2, "lr": 0.003})
    (home / "best_config.yaml").write_text(yaml.safe_dump(best.to_dict(), sort_keys=False))
    return home


BAD_FILES = [
    ("malformed", None, "name: [oops\n", "malformed YAML at line 2, column 1"),
    ("empty", None, "", "the file is empty"),
    ("not a mapping", None, "- a\n- b\n", "not a list"),
    ("unknown key", {"sheduler": {}}, None, "did you mean 'scheduler'"),
    ("unknown variant", {"space": {"variant": "vanila", "lr": 1e-3}}, None, "unknown variant 'vanila'"),
    ("inverted range", {"space": {"lr": {"loguniform": [1e-2, 1e-3]}}}, None, "is inverted"),
    ("empty range", {"space": {"lr": {"uniform": [0.1, 0.1]}}}, None, "is empty"),
    ("log range touching 0", {"space": {"lr": {"loguniform": [0.0, 1e-3]}}}, None, "a log range must be above 0"),
    ("latent_dim below 1", {"space": {"latent_dim": {"int": [0, 4]}}}, None, "latent_dim must be between 1 and 4096"),
    ("latent_dim of 10^9", {"space": {"latent_dim": 10**9, "lr": 1e-3}}, None, "between 1 and 4096, got 1000000000"),
    ("gpu fraction", {"resources": {"gpu": 1.5}}, None, "outside (0, 1]"),
    ("non-numeric", {"num_samples": "twelve"}, None, "num_samples must be an integer, got 'twelve'"),
    ("wrong type", {"train": {"epochs": [3]}}, None, "epochs must be an integer"),
    ("negative epochs", {"train": {"epochs": -2}}, None, "train.epochs must be >= 1, got -2"),
    ("zero epochs", {"train": {"epochs": 0}}, None, "train.epochs must be >= 1, got 0"),
    ("negative batch size", {"train": {"batch_size": -1, "epochs": 2}}, None, "batch_size must be >= 1"),
]


@pytest.mark.parametrize("content,text,message", [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES])
def test_bad_sweep_files_are_refused(capsys, tmp_path, sweep_file, content, text, message):
    assert_refused(capsys, tmp_path, "run", sweep_file(content, text), message=message)


def test_unreadable_files_are_refused(capsys, tmp_path, data_dir):
    assert_refused(capsys, tmp_path, "run", tmp_path / "missing.yaml", message="no such file")
    assert_refused(capsys, tmp_path, "run", tmp_path, message="is a folder")
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    assert_refused(capsys, tmp_path, "run", binary, message="is not a text file")


def test_a_config_that_is_not_a_regular_file_is_refused_without_reading_it(capsys, tmp_path, data_dir):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)  # opening it to read would wait for a writer forever
    assert_refused(capsys, tmp_path, "run", fifo, message="is not a regular file")
    assert_refused(capsys, tmp_path, "run", "/dev/zero", message="is not a regular file")
    huge = tmp_path / "huge.yaml"
    huge.write_text("description: " + "x" * (2 << 20))
    assert_refused(capsys, tmp_path, "run", huge, message="bytes, more than the")


BOMB = "name: tiny\nspace: {lr: 0.001}\nl0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)) + "description: *l8\n"


def test_an_alias_bomb_is_refused_before_anything_expands_it(capsys, tmp_path, sweep_file):
    import sweep.runner  # noqa: F401  (imported here so that the timing below is the refusal alone)

    started = time.monotonic()
    assert_refused(capsys, tmp_path, "run", sweep_file(text=BOMB), message="expand to more than 10,000 values")
    assert time.monotonic() - started < 1
    recursive = sweep_file(text="name: tiny\nspace: &s {lr: [*s]}\n")
    assert_refused(capsys, tmp_path, "run", recursive, message="an alias refers to the value that holds it")


def test_a_name_longer_than_a_folder_name_can_be_is_refused(capsys, tmp_path, sweep_file):
    assert_refused(capsys, tmp_path, "run", sweep_file({"name": "a" * 300}), message="is 300 characters")
    assert_refused(capsys, tmp_path, "run", sweep_file(), "--name", "b" * 101, message="keep it to 100 or fewer")


def test_an_object_store_uri_keeps_its_query_at_the_end(capsys, tmp_path, monkeypatch):
    from sweep import storage

    uri = "s3://bucket/sweeps/tiny?region=us-east-1&scheme=http"
    assert storage.join("s3://bucket/sweeps?region=us-east-1", "tiny", "ray") == "s3://bucket/sweeps/tiny/ray?region=us-east-1"
    assert storage.join("s3://bucket/", "tiny") == "s3://bucket/tiny" and storage.basename(uri) == "tiny"
    asked = []
    monkeypatch.setattr(storage, "download", lambda remote, local: asked.append(remote) or False)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "best", uri)
    assert asked == ["s3://bucket/sweeps/tiny/sweep.yaml?region=us-east-1&scheme=http"]
    assert code == 2 and f"no sweep at {uri}" in err and err.count("\n") == 1


def test_a_huge_value_is_shown_cut_short(capsys, tmp_path, sweep_file):
    path = sweep_file({"space": {"lr": 0.001, "latent_dim": "x" * 100_000}})
    code, _, err = run_cli(capsys, "run", path)
    assert code == 2 and "latent_dim must be an integer, got 'xxx" in err and len(err) < 300
    path = sweep_file({"train": {"epochs": 2, "device": "y" * 100_000}})  # judged by aemodels.TrainConfig
    code, _, err = run_cli(capsys, "run", path)
    assert code == 2 and "unknown device 'yyy" in err and len(err) < 300


@pytest.mark.parametrize("text,message", [
    ("name: tiny\nname: other\nspace: {lr: 0.001}\n", "line 2: key 'name' is given twice (first at line 1)"),
    ("name: tiny\ntrain:\n  epochs: 2\n  seed: 1\n  epochs: 400\nspace: {lr: 0.001}\n",
     "line 5: key 'epochs' is given twice (first at line 3)"),
    ("name: tiny\nspace: {lr: 0.001, latent_dim: 2, lr: 0.1}\n", "key 'lr' is given twice"),
], ids=["top level", "nested", "flow mapping"])
def test_a_key_given_twice_is_refused(capsys, tmp_path, sweep_file, text, message):
    assert_refused(capsys, tmp_path, "run", sweep_file(text=text), message=message)


def test_bad_set_override_is_refused(capsys, tmp_path, sweep_file):
    assert_refused(capsys, tmp_path, "run", sweep_file(), "--set", "train.epochs", message="expected key=value")
    assert_refused(capsys, tmp_path, "run", sweep_file(), "--set", "train.epochz=2", message="did you mean 'train.epochs'")


@pytest.mark.parametrize("item,message", [
    ("train.lr=abc", "unknown key 'train.lr' (did you mean 'space.lr'?; lr is a key of another section)"),
    ("epochs=3", "unknown key 'epochs' (did you mean 'train.epochs'?"),
    ("train.num_samples=3", "unknown key 'train.num_samples' (did you mean 'num_samples'?"),
    ("scheduler.seed=1", "(did you mean 'train.seed' or 'searcher.seed'?"),
])
def test_a_key_set_in_the_wrong_section_suggests_its_section(capsys, tmp_path, sweep_file, item, message):
    assert_refused(capsys, tmp_path, "run", sweep_file(), "--set", item, message=message)


def test_missing_dataset_offline_names_the_folder(capsys, tmp_path, sweep_file, monkeypatch):
    monkeypatch.setenv("AEMODELS_OFFLINE", "1")
    empty = tmp_path / "no-data"
    assert_refused(capsys, tmp_path, "run", sweep_file({"data_dir": str(empty)}),
                   message=f"mnist files are missing in {empty}/MNIST/raw (expected train-images-idx3-ubyte")


def test_unwritable_results_folder_is_refused(capsys, tmp_path, sweep_file):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be")
    code, _, err = run_cli(capsys, "run", sweep_file(), "--set", f"storage_path={blocker}/inner")
    assert code == 2 and "is not writable" in err and err.count("\n") == 1
    assert blocker.read_text().startswith("a file")


def test_existing_sweep_name_is_refused_without_overwrite(capsys, tmp_path, sweep_file):
    (tmp_path / "results" / "tiny").mkdir(parents=True)
    (tmp_path / "results" / "tiny" / "keep.txt").write_text("earlier work")
    code, _, err = run_cli(capsys, "run", sweep_file())
    assert code == 2 and "already exists" in err and "sweep resume tiny" in err and "--overwrite" in err
    assert (tmp_path / "results" / "tiny" / "keep.txt").read_text() == "earlier work"


@pytest.mark.parametrize("command", [["resume", "nope"], ["best", "nope"], ["analyze", "nope"], ["retrain", "nope"]])
def test_commands_on_an_unknown_sweep(capsys, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *command)
    assert code == 2 and "no sweep 'nope'" in err and "sweep ls" in err


def test_an_absolute_path_to_no_sweep_is_named_once(capsys, tmp_path):
    code, _, err = run_cli(capsys, "analyze", str(tmp_path / "nope"))
    assert code == 2 and err.count("\n") == 1 and err.count(str(tmp_path / "nope")) == 2  # the argument, the folder
    assert f"{tmp_path / 'nope'} holds no sweep.yaml" in err


def test_more_gpu_than_the_cluster_has_fails_fast(capsys, tmp_path, sweep_file):
    # This machine's Ray has no GPU: a GPU fraction per trial would leave every trial pending forever.
    assert_refused(capsys, tmp_path, "run", sweep_file({"resources": {"gpu": 0.5}}),
                   message="resources.gpu=0.5 asks for a GPU per trial but the Ray cluster has none")


def test_console_script_exit_status_and_help(tmp_path, data_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [")
    proc = subprocess.run([sys.executable, "-m", "sweep.cli", "run", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "malformed YAML" in proc.stderr
    for command in ("run", "check", "resume", "status", "stop", "ls", "analyze", "best", "retrain"):
        helped = subprocess.run([sys.executable, "-m", "sweep.cli", command, "--help"], capture_output=True, text=True)
        assert helped.returncode == 0 and f"usage: sweep {command}" in helped.stdout
    assert Path(tmp_path).joinpath("results").exists() is False


def test_a_garbage_best_config_is_one_line_naming_the_file_and_the_fix(capsys, finished_sweep):
    assert run_cli(capsys, "best", "tiny")[0] == 0
    path = finished_sweep / "best_config.yaml"
    for garbage in ("lr: [unclosed\n", "- a list\n", "epochz: 3\n", "lr: -1\n", "\x00\xff"):
        path.write_bytes(garbage.encode("latin-1"))
        for command in ("best", "retrain"):
            code, out, err = run_cli(capsys, command, "tiny")
            assert code == 2 and err.count("\n") == 1 and f"{path}: " in err, err
            assert "`sweep analyze tiny` rebuilds it" in err and not out
    path.unlink()
    path.mkdir()
    code, _, err = run_cli(capsys, "best", "tiny")
    assert code == 2 and "best_config.yaml: is a folder; `sweep analyze tiny` rebuilds it" in err


@pytest.mark.parametrize("table", ["trials.parquet", "epochs.parquet"])
def test_a_corrupt_table_is_one_line_naming_the_file_and_the_fix(capsys, finished_sweep, table):
    (finished_sweep / table).write_bytes(b"PAR1 not really")
    code, _, err = run_cli(capsys, "best", "tiny")
    assert code == 2 and err.count("\n") == 1 and f"{finished_sweep / table}: not a readable Parquet table" in err
    assert "`sweep analyze tiny` rebuilds it" in err


def test_ls_marks_a_sweep_whose_table_is_unreadable_and_lists_the_others(capsys, finished_sweep):
    import shutil

    for name in ("broken", "zlast"):
        shutil.copytree(finished_sweep, finished_sweep.parent / name)
    (finished_sweep.parent / "broken" / "trials.parquet").write_bytes(b"garbage")
    code, out, err = run_cli(capsys, "ls")
    lines = out.splitlines()
    assert code == 0 and not err and [line.split()[0] for line in lines[1:]] == ["broken", "tiny", "zlast"]
    assert "unreadable" in lines[1] and "not a readable Parquet table" in lines[1] and "sweep analyze" in lines[1]
    assert "0.06000" in lines[2] and "0.06000" in lines[3]


@pytest.mark.parametrize("command", ["analyze", "best", "retrain", "resume"])
@pytest.mark.parametrize("garbage", [b"sweep: [unclosed\n", b"just text\n", b"sweep: {name: tiny}\n", b"\xff\xfe\x00"],
                         ids=["malformed", "no sweep mapping", "invalid spec", "binary"])
def test_a_garbage_sweep_yaml_is_one_line_naming_the_file(capsys, finished_sweep, command, garbage):
    path = finished_sweep / "sweep.yaml"
    path.write_bytes(garbage)
    code, _, err = run_cli(capsys, command, "tiny")
    assert code == 2 and err.count("\n") == 1 and f"{path}: " in err and "Traceback" not in err, err


def test_retrain_into_a_folder_it_cannot_write_is_refused_before_training(capsys, finished_sweep, monkeypatch):
    import sweep.retrain

    monkeypatch.setattr(sweep.retrain, "train", lambda *a, **k: pytest.fail("trained before checking the folder"))
    (finished_sweep / "retrain").write_text("a file where the retrain folder goes")
    code, out, err = run_cli(capsys, "retrain", "tiny")
    assert code == 2 and err.count("\n") == 1 and f"cannot write to {finished_sweep / 'retrain'}" in err
    if os.geteuid() != 0:  # root writes through a folder's permissions
        (finished_sweep / "retrain").unlink()
        finished_sweep.chmod(0o555)
        try:
            code, _, err = run_cli(capsys, "retrain", "tiny")
        finally:
            finished_sweep.chmod(0o755)
        assert code == 2 and "Permission denied" in err and err.count("\n") == 1


@pytest.mark.parametrize("args,message", [
    (["analyze", "tiny", "--top", "-3"], "sweep analyze: error: argument --top: must be >= 1, got -3"),
    (["analyze", "tiny", "--top", "0"], "argument --top: must be >= 1, got 0"),
    (["analyze", "tiny", "--top", "ten"], "argument --top: expected a whole number >= 1, got 'ten'"),
    (["retrain", "tiny", "--epochs", "0"], "argument --epochs: must be >= 1, got 0"),
    (["retrain", "tiny", "--threads", "-1"], "argument --threads: must be >= 1, got -1"),
    (["analyse", "tiny"], "sweep: error: argument COMMAND: invalid choice"),
])
def test_bad_arguments_are_one_line(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(args)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and message in err and err.count("\n") == 1 and "--help` explains" in err


def test_a_sweep_killed_before_rays_first_snapshot_is_advised_to_run_again_not_resume(capsys, finished_sweep,
                                                                                       monkeypatch):
    for name in ("trials.parquet", "epochs.parquet", "best_config.yaml"):
        (finished_sweep / name).unlink()
    for command in ("best", "retrain"):
        code, _, err = run_cli(capsys, command, "tiny")
        assert code == 2 and err.count("\n") == 1 and "start it again: `sweep run s.yaml --overwrite`" in err, err
        assert "finishes it" not in err
    code, _, err = run_cli(capsys, "resume", "tiny")  # the advice agrees with what resume says
    assert code == 2 and "--overwrite" in err
    import sweep.results

    monkeypatch.setattr(sweep.results, "check_resumable", lambda home: None)  # a sweep Ray did snapshot
    code, _, err = run_cli(capsys, "best", "tiny")
    assert code == 2 and "`sweep resume tiny` finishes it" in err


@pytest.mark.parametrize("garbage", ['{"trial_data": 5}', '{"other": []}'])
def test_a_garbage_experiment_state_is_one_line_naming_the_file(capsys, finished_sweep, garbage):
    state = finished_sweep / "ray" / "experiment_state-2026-12-03_00-00-00.json"
    state.parent.mkdir()
    state.write_text(garbage)
    code, _, err = run_cli(capsys, "analyze", "tiny")
    assert code == 2 and err.count("\n") == 1 and f"{state}: Ray's experiment state cannot be read" in err, err


def test_an_unparseable_experiment_state_is_read_as_cut_short_and_the_old_tables_kept(capsys, finished_sweep):
    state = finished_sweep / "ray" / "experiment_state-2026-12-03_00-00-00.json"
    state.parent.mkdir()
    state.write_text('{"trial_data": [["{')  # as a crash mid-copy leaves it; here with no trial folders beside
    before = (finished_sweep / "trials.parquet").read_bytes()
    code, out, err = run_cli(capsys, "analyze", "tiny")
    assert "cut short by a crash; its trials are read from their own folders" in out
    assert code == 2 and err.count("\n") == 1 and "lack 1 finished trial(s)" in err, err
    assert (finished_sweep / "trials.parquet").read_bytes() == before
