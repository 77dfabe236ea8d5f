"""The variant registry: one entry per variant, read by the config, the pack, the sweep space, the tables
and the report; a variant registered from outside aemodels trains, packs and sweeps like the seed's."""
import dataclasses
import os
from pathlib import Path

import pytest
import yaml

from aemodels import REGISTRY, Knob, Pack, TrainConfig, TrainState, load_dataset, register_variant, train
from aemodels.registry import MODULES_ENV, import_variant_modules, unregister_variant
from sweep import figures, report
from sweep.results import HYPER_DTYPES, TRIAL_COLUMNS
from sweep.spec import CONDITIONAL, SEARCHED

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def tiny():
    """The toy variant of tests/toy_variant.py, registered for one test and removed after it."""
    import importlib
    import sys

    sys.modules.pop("toy_variant", None)
    module = importlib.import_module("toy_variant")
    yield module
    unregister_variant("tiny")
    sys.modules.pop("toy_variant", None)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_variants_knobs_reach_the_config_the_space_the_tables_and_the_report(name):
    entry = REGISTRY[name]
    config = TrainConfig(variant=name)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert config.uses == ("latent_dim", "lr", *(k.name for k in entry.knobs))
    for knob in entry.knobs:
        assert knob.name in fields and getattr(config, knob.name) == knob.default
        assert knob.name in SEARCHED and CONDITIONAL[knob.name] == name
        assert HYPER_DTYPES[knob.name] == "Float64" and knob.name in TRIAL_COLUMNS
        assert knob.name in report.TABLE_COLUMNS
        assert knob.low < knob.high and knob.minimum <= knob.low
    for other in REGISTRY.values():
        for knob in other.knobs:
            if other.name != name:
                assert getattr(config, knob.name) is None
    assert figures.variant_color(name) == entry.color
    assert type(TrainState.initial(TrainConfig(variant=name, latent_dim=3)).to_module()) is entry.module


def test_a_toy_variant_is_one_class_and_one_entry_and_packs_with_its_own_module(tiny, small):
    alone = [small(variant="tiny", latent_dim=3), small(variant="tiny", latent_dim=9, lr=3e-3, seed=4)]
    expected = [[row["val_loss"] for row in train(c).history] for c in alone]
    pack = Pack.for_config(alone[0], load_dataset(alone[0].dataset, alone[0].data_dir))
    for k, config in enumerate(alone):
        pack.add(k, TrainState.initial(config))
    got = {0: [], 1: []}
    for _ in range(2):
        for k, row in pack.run_epoch().items():
            got[k].append(row["val_loss"])
    for k in range(2):
        assert got[k] == pytest.approx(expected[k], rel=1e-5)
    module = pack.snapshot(1).to_module()
    assert isinstance(module, tiny.TinyAE) and module.encoder[2].weight.shape == (9, 32)
    assert expected[0][-1] < expected[0][0]


def test_the_pack_trains_a_registered_modules_own_forward(tiny, small, monkeypatch):
    calls = []
    forward = tiny.TinyAE.forward
    monkeypatch.setattr(tiny.TinyAE, "forward", lambda self, x: calls.append(x.shape) or forward(self, x))
    train(small(variant="tiny", epochs=1))
    assert calls and calls[0] == (128, 784)


def test_registering_refuses_a_taken_name_a_shared_knob_and_a_role_without_its_knob(tiny):
    with pytest.raises(ValueError, match="variant 'tiny' is already registered"):
        register_variant("tiny", tiny.TinyAE, family="tiny", color="k")
    with pytest.raises(ValueError, match="knob 'noise_factor' is already used by 'denoising'"):
        register_variant("other", tiny.TinyAE, family="tiny", color="k", knobs=[Knob("noise_factor", 0.3, 0.1, 0.7)])
    with pytest.raises(ValueError, match="penalty='sparsity_weight' is not one of its knobs"):
        register_variant("other", tiny.TinyAE, family="tiny", color="k", penalty="sparsity_weight")
    with pytest.raises(ValueError, match="penalty='weight' needs a penalty\\(z\\) method on TinyAE; add one"):
        register_variant("other", tiny.TinyAE, family="tiny", color="k", knobs=[Knob("weight", 1.0, 0.1, 2.0)],
                         penalty="weight")
    assert "other" not in REGISTRY


def test_a_variant_module_that_cannot_be_imported_is_named_with_the_fix(monkeypatch):
    monkeypatch.setenv(MODULES_ENV, "no_such_variants_module")
    with pytest.raises(ImportError, match=f"{MODULES_ENV} names 'no_such_variants_module', which cannot be "
                                          "imported .*put its folder on PYTHONPATH"):
        import_variant_modules()


@pytest.mark.slow
def test_a_toy_variant_registered_outside_aemodels_sweeps_and_retrains_exactly(tiny, data_dir, tmp_path, monkeypatch):
    """The driver has it registered (the fixture); Ray's workers import it through MODULES_ENV."""
    from sweep import load_results
    from sweep.cli import main

    monkeypatch.setenv(MODULES_ENV, "toy_variant")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    sweep = tmp_path / "toy.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "toy", "train": {"epochs": 2, "train_subset": 500, "batch_size": 100},
        "space": {"variant": "tiny", "latent_dim": {"int": [2, 8]}, "lr": {"loguniform": [1e-3, 1e-2]}},
        "num_samples": 3, "resources": {"execution": "packed", "pack_size": 3}}))
    assert main(["run", str(sweep), "--set", f"storage_path={tmp_path}"]) == 0
    found = load_results(str(tmp_path / "toy"))
    assert len(found.trials) == 3 and set(found.trials["variant"]) == {"tiny"}
    assert set(found.trials["status"]) <= {"completed", "stopped"}
    assert main(["retrain", str(found.home)]) == 0
    metrics = yaml.safe_load((found.home / "retrain" / "metrics.json").read_text())
    assert metrics["val_loss"] == metrics["trial_val_loss"]
