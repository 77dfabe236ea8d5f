"""A simulated sweep on GPUs declared to Ray (none present): configs/mnist.yaml's shape through the packed
plan (one trainer per declared GPU, proxies, ASHA, checkpoints, study, tables), and through trial execution."""
import json
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from sweep import runner
from sweep.study import open_storage
from sweep.spec import load

DECLARED_GPUS, EPOCHS = 2, 9


@pytest.fixture(scope="module")
def cluster():
    import ray

    # As `sweep run` starts its local Ray (runner.connect), plus the declared GPUs.
    ray.init(num_cpus=2, num_gpus=DECLARED_GPUS, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False,
             _system_config={"preload_python_modules": list(runner.TRIAL_CODE), "enable_worker_prestart": True})
    yield
    ray.shutdown()


def simulated(tmp_path, trials: int, *extra: str):
    overrides = (f"storage_path={tmp_path}", f"num_samples={trials}", f"train.epochs={EPOCHS}",
                 "simulate.seconds_per_epoch=0", "searcher.n_startup_trials=4", *extra)
    return load("configs/mnist.yaml", overrides)


def complete(found, trials: int):
    assert len(found.trials) == trials and found.trials["trial_id"].is_unique
    assert set(found.trials["status"]) <= {"completed", "stopped"} and (found.trials["status"] == "stopped").any()
    epochs = found.epochs
    assert len(epochs) == found.trials["epochs"].sum() and not epochs.duplicated(["trial_id", "epoch"]).any()
    assert epochs["val_loss"].notna().all() and set(found.trials["device"]) == {"simulated"}
    telemetry = epochs[["cpu_s", "device_s", "wait_s"]].astype(float)  # simulated device time, real CPU time
    assert telemetry.notna().all().all() and (telemetry >= 0).all().all()
    study = optuna.load_study(study_name=found.spec.name,
                              storage=open_storage(f"{found.home}/study.journal", writer=False))
    assert sum(len(t.intermediate_values) for t in study.trials) == len(epochs)


def test_packed_sweep_runs_one_trainer_per_declared_gpu_without_cuda(cluster, tmp_path):
    spec = simulated(tmp_path, 12, "max_concurrent_trials=6", "resources.pack_size=3")
    plan = runner.plan(spec)
    assert (plan.execution, plan.trainers, plan.max_concurrent) == ("packed", DECLARED_GPUS, 6)
    found = runner.run(spec, argv=["test"])
    complete(found, 12)
    assert set(found.trials["execution"]) == {"packed"}
    # At 0 s an epoch a trial ends long before a proxy's process has started: the packs fill only because
    # the trainers wait for the first wave of trials (packed.OpenPacks).
    first_rounds = found.epochs.sort_values("timestamp").groupby("trainer")["pack_size"].first()
    assert len(first_rounds) == DECLARED_GPUS and (first_rounds == 3).all()
    trainers = json.loads((found.home / "trainers.json").read_text())
    assert len(trainers) == DECLARED_GPUS and all(t["member_epochs"] > 0 for t in trainers)
    assert not any(t["torch_imported"] for t in trainers), "a simulated trainer must not touch torch or CUDA"
    # A proxy asks for the epochs up to its next report at once: one request per Tune result, not per epoch.
    results = sum(len(f.read_text().splitlines()) for f in (found.home / "ray").glob("*/result.json"))
    assert sum(t["requests"] for t in trainers) == results < len(found.epochs)
    assert not {"in_pack_s", "between_s"} & set(found.epochs.columns)
    checkpoints = list((found.home / "ray").glob("*/checkpoint_*/state.pt"))
    assert checkpoints and max(p.stat().st_size for p in checkpoints) < 16_384


def test_trial_execution_replays_the_same_way(cluster, tmp_path, monkeypatch):
    import sweep.storage
    from sweep.experiment import state_files

    written, snapshots = [], []

    class Recorded(sweep.storage.ReplacingFile):
        def __init__(self, target):
            written.append(target)
            if Path(target).name.startswith("experiment_state-"):
                snapshots.append(time.monotonic())
            super().__init__(target)

    monkeypatch.setattr(sweep.storage, "ReplacingFile", Recorded)  # the driver's writes; workers import their own
    found = runner.run(simulated(tmp_path, 6, "resources.execution=trial", "resources.gpu=0.5"), argv=["test"])
    complete(found, 6)
    assert set(found.trials["execution"]) == {"trial"}
    # Ray wrote its state into the folder through WholeFiles, so that a kill mid-copy leaves the file before.
    state = state_files(found.home / "ray")
    assert len(state) >= 3 and {str(p) for p in state} <= set(written), (state, written[:5])
    # The trials' files, which Ray copies again with every snapshot, are written in place as Ray does.
    assert not [w for w in written if w.endswith(("params.json", "result.json", "progress.csv"))]
    # Tune's period (at least 10 s) spaces its snapshots; one forced by a trial's checkpoints would not be, and
    # each serialises every trial. The last snapshot is the one Tune takes at the end.
    gaps = [b - a for a, b in zip(snapshots[:-2], snapshots[1:-1])]
    assert len(snapshots) >= 2 and all(gap >= 9 for gap in gaps), gaps
    # A state file in a layout sweep.experiment does not know (a later Ray's) is read through Ray's public
    # reader, to the same tables.
    import sweep.experiment
    from sweep.results import build_tables

    def unknown_layout(state):
        raise KeyError("trial_data")

    known = build_tables(found.home)
    monkeypatch.setattr(sweep.experiment, "snapshot_entries", unknown_layout)
    public = build_tables(found.home)
    for frame, keys in (("trials", ["trial_id"]), ("epochs", ["trial_id", "epoch"])):
        a, b = (getattr(r, frame).sort_values(keys).reset_index(drop=True) for r in (known, public))
        pd.testing.assert_frame_equal(a, b)
    assert len(public.trials) == 6
