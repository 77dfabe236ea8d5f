"""`sweep extend` and `warm_start`: one small simulated sweep, extended in its own study and then used to
warm-start a new sweep; exact counts in tables and studies, TPE conditioned on the old trials, and each
refusal in one line with exit status 2."""
from pathlib import Path

import optuna
import pandas as pd
import pytest

from cli_calls import run_cli, sweep_cli
from sweep.searcher import StudySearch, _key
from sweep.study import open_storage
from sweep.space import SearchSpace
from sweep.results import read_spec

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "configs" / "quick.yaml")
FAST = ("--set", "train.epochs=3", "--set", "simulate={seconds_per_epoch: 0}")


def study_trials(home: Path, name: str) -> list:
    study = optuna.load_study(study_name=name, storage=open_storage(str(home / "study.journal"), writer=False))
    return study.get_trials(deepcopy=False)


def one_line_error(capsys, *args) -> str:
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and err.count("\n") == 1, err
    return err


@pytest.mark.slow
def test_extend_continues_the_study_and_warm_start_seeds_a_new_one(capsys, tmp_path, data_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "results" / "base"
    sweep_cli(tmp_path, "run", QUICK, "--name", "base", "--set", "num_samples=6", *FAST)
    old = study_trials(base, "base")
    assert len(old) == 6

    # Refusals, before anything is written: a key other than num_samples, a total that does not grow.
    err = one_line_error(capsys, "extend", "base", "--set", "num_samples=8", "--set", "train.epochs=5")
    assert "can only grow num_samples" in err and "train.epochs" in err
    err = one_line_error(capsys, "extend", "base", "--set", "num_samples=6")
    assert "N > 6" in err
    assert read_spec(base).extensions == () and not (base / "ray-1").exists()

    # The extension's searcher (driver 1 of 2) learns every old trial and counts none toward its budget;
    # its first suggestion is TPE's, not the random start-up a fresh study would give.
    spec = read_spec(base)
    extension = StudySearch(SearchSpace(spec.space), spec.searcher, str(base / "study.journal"), "base",
                            spec.epochs, num_samples=4, driver=1, drivers=2)
    fresh = StudySearch(SearchSpace(spec.space), spec.searcher, str(tmp_path / "fresh.journal"), "base",
                        spec.epochs, num_samples=4, driver=1, drivers=2)
    assert extension._model().n == 6 and fresh._model().n == 0 and not extension._finished
    assert extension.suggest("first") != fresh.suggest("first")
    assert len(study_trials(base, "base")) == 6  # suggesting wrote nothing

    out = sweep_cli(tmp_path, "extend", "base", "--set", "num_samples=10")
    assert "done: 10 trials" in out, out
    spec = read_spec(base)
    assert spec.num_samples == 10 and spec.extensions == (4,) and (base / "ray-1" / "tuner.pkl").is_file()
    trials = pd.read_parquet(base / "trials.parquet")
    assert len(trials) == 10 and trials["trial_id"].is_unique
    studied = study_trials(base, "base")
    assert len(studied) == 10 and [t.user_attrs.get("driver", 0) for t in studied].count(1) == 4
    assert {t.user_attrs["tune_trial_id"] for t in studied} == set(trials["trial_id"])
    assert len({_key(t.params) for t in studied}) == 10  # no configuration twice
    code, out, _ = run_cli(capsys, "status", "base")
    assert code == 0 and "10/10 done" in out

    # Warm start: the old sweep's trials that fit (no conv in the new space) seed the study, apart from its tables.
    err = one_line_error(capsys, "run", QUICK, "--name", "nowhere", "--warm-start", "nope", *FAST)
    assert "warm_start: no sweep 'nope'" in err
    err = one_line_error(capsys, "run", QUICK, "--name", "nowhere", "--warm-start", "base",
                         "--set", "space.lr={loguniform: [0.5, 0.9]}", *FAST)
    assert "none of sweep 'base'" in err and not (tmp_path / "results" / "nowhere").exists()

    fitting = [t for t in studied if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
               and t.params["variant"] != "conv"]
    assert fitting, "the old sweep has no trial the new space keeps"
    warm = tmp_path / "results" / "warm"
    sweep_cli(tmp_path, "run", QUICK, "--name", "warm", "--warm-start", "base", "--set", "num_samples=4",
              "--set", "space.variant={choice: [vanilla, denoising, sparse]}", *FAST)
    assert len(pd.read_parquet(warm / "trials.parquet")) == 4
    listed = pd.read_parquet(warm / "warm_start.parquet")
    assert len(listed) == len(fitting) and set(listed["trial_id"]) == {t.user_attrs["tune_trial_id"] for t in fitting}
    seeded = study_trials(warm, "warm")
    from_old = [t for t in seeded if t.user_attrs.get("warm_start") == "base"]
    own = [t for t in seeded if "tune_trial_id" in t.user_attrs]
    assert len(from_old) == len(fitting) and len(own) == 4 and len(seeded) == len(fitting) + 4
    assert not any("tune_trial_id" in t.user_attrs for t in from_old)
    assert {_key(t.params) for t in from_old} == {_key(t.params) for t in fitting}
    assert not {_key(t.params) for t in own} & {_key(t.params) for t in fitting}  # none proposed again


def test_extending_a_running_sweep_is_refused_in_one_line(capsys, tmp_path, data_dir, monkeypatch):
    """The sweep's lock is held (its driver runs): extend says so and writes nothing."""
    import yaml
    from filelock import FileLock

    from sweep.spec import parse

    monkeypatch.chdir(tmp_path)
    home = tmp_path / "results" / "busy"
    home.mkdir(parents=True)
    spec = parse({"name": "busy", "train": {"epochs": 2}, "space": {"lr": {"loguniform": [1.0e-3, 1.0e-2]}},
                  "num_samples": 4, "storage_path": str(tmp_path / "results")})
    (home / "sweep.yaml").write_text(yaml.safe_dump({"sweep": spec.to_dict(), "meta": {}}))
    before = (home / "sweep.yaml").read_text()
    with FileLock(str(tmp_path / "results" / ".busy.lock")):
        err = one_line_error(capsys, "extend", "busy", "--set", "num_samples=6")
    assert "in use by another `sweep` command" in err and (home / "sweep.yaml").read_text() == before
