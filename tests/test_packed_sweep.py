"""Packed execution end to end on CPU: trials trained together by one trainer, each still a full Tune trial."""
import json
import os

import optuna
import pytest
import yaml

from sweep import load_results
from sweep.cli import main
from sweep.study import open_storage

pytestmark = pytest.mark.slow
TRIALS, EPOCHS = 8, 3


@pytest.fixture(scope="module")
def packed(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("packed")
    code = main(["run", "configs/quick.yaml", "--set", f"storage_path={root}", "--set", f"num_samples={TRIALS}",
                 "--set", f"train.epochs={EPOCHS}", "--set", "train.train_subset=1000",
                 "--set", "resources.execution=packed", "--set", "resources.pack_size=6",
                 "--set", "scheduler.reduction_factor=2", "--set", "searcher.n_startup_trials=4",
                 "--set", "scheduler.report=epoch"])
    assert code == 0
    return load_results(str(root / "quick"))


def test_every_trial_has_its_rows_and_ran_packed(packed):
    trials, epochs = packed.trials, packed.epochs
    assert len(trials) == TRIALS and set(trials["execution"]) == {"packed"}
    assert set(trials["status"]) <= {"completed", "stopped"} and (trials["status"] == "stopped").any()
    assert len(epochs) == trials["epochs"].sum() and not epochs.duplicated(["trial_id", "epoch"]).any()
    assert epochs["pack_size"].max() > 1, "trials trained together"
    assert epochs["pack_size"].max() <= 6


def test_report_epoch_sends_tune_one_result_per_epoch(packed):
    """scheduler.report: epoch restores per-epoch reporting (the trial-execution sweeps report at rungs)."""
    for row in packed.trials.itertuples():
        (folder,) = [f for f in (packed.home / "ray").iterdir() if f.is_dir() and row.trial_id in f.name]
        results = [json.loads(line) for line in (folder / "result.json").read_text().splitlines()]
        assert [r["epoch"] for r in results] == list(range(1, row.epochs + 1))


def test_each_packed_trial_has_its_own_checkpoints(packed):
    for row in packed.trials.itertuples():
        folders = list((packed.home / "ray").glob(f"*_{row.trial_id}_*/checkpoint_*/state.pt"))
        assert folders, f"trial {row.trial_id} has no checkpoint"


def test_study_sees_packed_trials_like_any_others(packed):
    study = optuna.load_study(study_name="quick", storage=open_storage(f"{packed.home}/study.journal", writer=False))
    states = {t.user_attrs.get("tune_trial_id"): t.state for t in study.trials}
    for row in packed.trials.itertuples():
        expected = optuna.trial.TrialState.COMPLETE if row.status == "completed" else optuna.trial.TrialState.PRUNED
        assert states[row.trial_id] == expected


def test_a_packed_trial_computes_what_its_config_computes_alone(packed, capsys):
    # `sweep retrain` trains the best config alone with aemodels.train: same seed, same numbers, to rounding.
    capsys.readouterr()
    assert main(["retrain", str(packed.home)]) == 0
    metrics = json.loads((packed.home / "retrain" / "metrics.json").read_text())
    assert metrics["val_loss"] == pytest.approx(metrics["trial_val_loss"], rel=1e-3)
    rows = packed.epochs[packed.epochs["trial_id"] == packed.best_trial]
    assert [h["val_loss"] for h in metrics["history"]] == pytest.approx(rows["val_loss"].tolist(), rel=1e-3)
    # ... and says so when the trial shared its pack, whose sums run in another order
    assert metrics["trial_pack_size"] == rows["pack_size"].max()
    said = "note: the trial trained in a pack of up to" in capsys.readouterr().out
    assert said == (metrics["trial_pack_size"] > 1)


def test_trainer_time_is_recorded(packed):
    trainers = json.loads((packed.home / "trainers.json").read_text())
    assert len(trainers) == os.cpu_count()  # without a GPU: one single-threaded trainer per core
    assert sum(t["member_epochs"] for t in trainers) == packed.trials["epochs"].sum()
    assert yaml.safe_load((packed.home / "sweep.yaml").read_text())["meta"]["execution"] == "packed"


def test_members_device_seconds_add_up_to_their_trainers_busy_time(packed):
    epochs = packed.epochs
    values = epochs[["cpu_s", "device_s", "wait_s"]].astype(float)
    assert values.notna().all().all() and (values >= 0).all().all()
    values = packed.trials[["cpu_s", "device_s", "wait_s", "queued_s"]].astype(float)
    assert values.notna().all().all() and (values >= 0).all().all()
    for trainer in json.loads((packed.home / "trainers.json").read_text()):
        busy = trainer["train_s"] + trainer["restack_s"] + trainer["serialize_s"]
        members = epochs.loc[epochs["trainer"] == trainer["name"], "device_s"].sum()
        assert members == pytest.approx(busy, rel=0.05), trainer["name"]


def test_analyze_shows_each_trainers_utilisation(packed, capsys):
    from sweep.telemetry import summarise

    summary = summarise(packed.trials, packed.epochs, packed.best_trial)
    assert len(summary["trainers"]) == os.cpu_count()
    assert all(0 < t["utilisation"] <= 1.0 for t in summary["trainers"]), summary["trainers"]
    assert summary["to_best"]["trial_epochs"] <= summary["trial_epochs"]
    assert main(["status", str(packed.home)]) == 0
    assert "compute:" in capsys.readouterr().out
