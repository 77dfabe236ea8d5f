"""Simulated training: recorded curves replayed deterministically, through the same trial and packed paths."""
import json
import statistics
import subprocess
import sys

import pytest

from sweep.simulate import CURVES_FILE, Curve, SimPack, SimState, recorded_runs, train

VARIANTS = ("vanilla", "denoising", "sparse", "conv")


def settings(variant="vanilla", epochs=30, **changes):
    values = {"variant": variant, "latent_dim": 16, "lr": 1e-3, "epochs": epochs, "seed": 0,
              "noise_factor": 0.3 if variant == "denoising" else None,
              "sparsity_weight": 1e-3 if variant == "sparse" else None}
    return {**values, **changes}


def test_the_recorded_curves_cover_every_variant_and_name_their_command():
    data = json.loads(CURVES_FILE.read_text())
    assert "record_curves.py" in data["meta"]["command"]
    assert set(recorded_runs()) == set(VARIANTS)
    assert CURVES_FILE.stat().st_size < 300_000


def test_a_trials_curve_is_the_same_every_time_and_differs_between_seeds():
    first = [Curve(settings()).val_loss(e) for e in range(1, 31)]
    assert first == [Curve(settings()).val_loss(e) for e in range(1, 31)]
    assert first != [Curve(settings(seed=1)).val_loss(e) for e in range(1, 31)]


def test_curves_fall_on_average_and_the_variants_differ():
    finals = {}
    for variant in VARIANTS:
        drops = []
        for lr in (1e-4, 1e-3, 1e-2):
            for latent in (2, 16, 64):
                curve = Curve(settings(variant, lr=lr, latent_dim=latent))
                drops.append(curve.val_loss(1) - curve.val_loss(30))
                assert 0 < curve.val_loss(30) < 1
        assert statistics.mean(drops) > 0, variant
        finals[variant] = Curve(settings(variant)).val_loss(30)
    assert len({round(v, 5) for v in finals.values()}) == len(VARIANTS)


def test_simulated_train_checkpoints_reports_and_resumes_like_aemodels_train(tmp_path):
    rows, states = [], []
    final = train(settings(epochs=5), report=rows.append, checkpoint=states.append)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5] and rows[-1]["status"] == "completed"
    assert final.epoch == 5 and [s.epoch for s in states] == [1, 2, 3, 4, 5]
    states[1].save(tmp_path / "state", durable=False)
    assert (tmp_path / "state").stat().st_size < 4096  # a checkpoint of a few hundred bytes, not a model
    resumed = []
    train(settings(epochs=5), report=resumed.append, resume=SimState.load(tmp_path / "state"))
    assert resumed == rows[2:]
    with pytest.raises(ValueError, match="not a simulated"):
        SimState.from_bytes(json.dumps({"format": 1}).encode())


def test_a_packed_member_replays_the_curve_a_trial_of_its_own_does():
    alone = []
    train(settings("conv", epochs=4), report=alone.append)
    pack = SimPack()
    pack.update([], {"a": SimState.initial(settings("conv", epochs=4)), "b": SimState.initial(settings(epochs=4))})
    packed = [pack.run_epoch()["a"] for _ in range(2)]
    parked = pack.snapshot("a")
    pack.retain(["b"])
    pack.update(["b"], {"a": parked})
    packed += [pack.run_epoch()["a"] for _ in range(2)]
    assert [r["val_loss"] for r in packed] == [r["val_loss"] for r in alone]
    assert packed[0]["pack_size"] == 2 and packed[-1]["status"] == "completed"


def test_simulation_imports_no_torch():
    code = ("import sys; import sweep.simulate as s; "
            "s.train({'variant': 'conv', 'latent_dim': 8, 'lr': 1e-3, 'epochs': 3}); "
            "import sweep.packed; p = sweep.packed.PackTrainer(simulate={'seconds_per_epoch': 0}); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


class _NotAnActor:
    """What ray.get_runtime_context() says outside an actor, without starting Ray."""

    was_current_actor_reconstructed = False

    def get_actor_id(self):
        return None

    def get_actor_name(self):
        return "trainer"

    def get_node_id(self):
        return "node"


def test_a_trainer_trains_a_member_up_to_its_next_report_in_one_request(monkeypatch):
    """A proxy asks once per report: the rows of every epoch up to it, the state with the last alone, and an
    earlier end when the trial completes or its checkpoint falls due."""
    import asyncio

    import ray

    from sweep.packed import BETWEEN, PackTrainer

    monkeypatch.setattr(ray, "get_runtime_context", _NotAnActor)
    monkeypatch.setattr(ray, "get_gpu_ids", list)

    async def scenario():
        trainer = PackTrainer(gather_s=0.0, simulate={"seconds_per_epoch": 0})
        await trainer.join("a", settings(epochs=5), None)
        await trainer.join("b", settings("conv", epochs=5), None)
        (a_rows, a_state), (b_rows, b_state) = await asyncio.gather(trainer.next_epochs("a", 3),
                                                                    trainer.next_epochs("b", 1))
        due_rows, due_state = await trainer.next_epochs("b", 4, state_after_s=0.0)  # a checkpoint is due now
        end_rows, end_state = await trainer.next_epochs("a", 9)
        return a_rows, a_state, b_rows, b_state, due_rows, due_state, end_rows, end_state

    a_rows, a_state, b_rows, b_state, due_rows, due_state, end_rows, end_state = asyncio.run(scenario())
    assert [r["epoch"] for r in a_rows] == [1, 2, 3] and SimState.from_bytes(a_state).epoch == 3
    assert [BETWEEN in r for r in a_rows] == [False, True, True]
    assert [r["epoch"] for r in b_rows] == [1] and SimState.from_bytes(b_state).epoch == 1
    assert [r["epoch"] for r in due_rows] == [2] and SimState.from_bytes(due_state).epoch == 2
    assert [r["epoch"] for r in end_rows] == [4, 5] and end_rows[-1]["status"] == "completed"
    assert SimState.from_bytes(end_state).epoch == 5
    alone = []
    train(settings(epochs=5), report=alone.append)
    assert [r["val_loss"] for r in a_rows + end_rows] == [r["val_loss"] for r in alone]
