"""Sweep files: what a valid one resolves to, and a one-line error naming the fix for every bad one."""
import copy
import dataclasses

import pytest
import yaml

from sweep.space import SearchSpace
from sweep.spec import SpecError, apply_override, load, parse, rung_epochs

QUICK = "configs/quick.yaml"
BASE = {"name": "t", "train": {"epochs": 3, "train_subset": 1000},
        "space": {"variant": {"choice": ["vanilla", "denoising", "sparse"]}, "latent_dim": {"logint": [2, 64]},
                  "lr": {"loguniform": [1.0e-4, 1.0e-2]}, "noise_factor": {"uniform": [0.1, 0.7]},
                  "sparsity_weight": {"loguniform": ["1e-5", "1e-2"]}}}


def with_(path: str, value):
    raw = copy.deepcopy(BASE)
    apply_override(raw, f"{path}={yaml.safe_dump(value, default_flow_style=True).strip()}")
    return raw


def without(*keys):
    raw = copy.deepcopy(BASE)
    node = raw
    for key in keys[:-1]:
        node = node[key]
    del node[keys[-1]]
    return raw


def test_shipped_configs_parse():
    quick = load(QUICK)
    assert quick.name == "quick" and quick.epochs >= 2 and quick.num_samples >= 12
    full = load("configs/mnist.yaml")
    assert full.epochs == 30 and full.num_samples >= 200 and full.train["train_subset"] is None
    assert set(full.variants()) == {"vanilla", "denoising", "sparse", "conv"}


def test_defaults_are_filled_and_round_trip():
    spec = parse(copy.deepcopy(BASE))
    assert spec.searcher.seed == 0 and spec.scheduler.grace_period == 1 and spec.storage_path == "results"
    assert spec.simulate is None  # real training unless the file asks for simulation


def test_simulate_section_is_read_and_round_trips():
    spec = parse(with_("simulate", {}))
    assert spec.simulate is not None and spec.simulate.seconds_per_epoch == 0
    spec = parse(with_("simulate.seconds_per_epoch", 0.02))
    assert spec.simulate.seconds_per_epoch == 0.02 and parse(spec.to_dict()) == spec
    assert spec.space["sparsity_weight"].low == 1e-5  # YAML 1.1 reads 1e-5 as a string; it is still a number
    assert parse(spec.to_dict()) == spec


def test_a_section_left_empty_in_the_file_means_its_defaults():
    raw = yaml.safe_load("name: t\nspace: {lr: 0.001}\nsearcher:\nscheduler:\ntrain:\ntracking:\npoints:\n")
    assert parse(raw) == parse({"name": "t", "space": {"lr": 0.001}})


def test_a_spec_derived_in_code_is_not_judged_by_the_rules_between_sections():
    # `sweep confirm` reruns a few configurations of an extended sweep: fewer trials than its extensions add.
    spec = parse(with_("num_samples", 20) | {"extensions": [5]})
    assert dataclasses.replace(spec, num_samples=3).num_samples == 3
    with pytest.raises(SpecError, match="extensions add 5 trials but num_samples=3"):
        parse(spec.to_dict() | {"num_samples": 3})


def test_train_config_of_a_trial_has_the_fixed_settings_and_the_sampled_values():
    spec = parse(copy.deepcopy(BASE))
    config = spec.train_config({"variant": "denoising", "latent_dim": 4, "lr": 1e-3, "noise_factor": 0.5})
    assert (config.epochs, config.train_subset, config.noise_factor, config.sparsity_weight) == (3, 1000, 0.5, None)


class FakeTrial:
    """Records what a define-by-run space asks for, answering with the first option or the low end."""

    def __init__(self, variant):
        self.variant, self.asked = variant, []

    def suggest_categorical(self, name, choices):
        self.asked.append(name)
        return self.variant if name == "variant" else choices[0]

    def suggest_int(self, name, low, high, step=1, log=False):
        self.asked.append(name)
        return low

    def suggest_float(self, name, low, high, step=None, log=False):
        self.asked.append(name)
        return low


@pytest.mark.parametrize("variant,expected", [("vanilla", []), ("denoising", ["noise_factor"]),
                                              ("sparse", ["sparsity_weight"])])
def test_space_samples_a_variant_knob_only_for_its_variant(variant, expected):
    trial = FakeTrial(variant)
    SearchSpace(parse(copy.deepcopy(BASE)).space)(trial)
    assert trial.asked == ["variant", "latent_dim", "lr"] + expected


def test_fixed_values_are_returned_not_sampled():
    raw = with_("space.variant", "denoising")
    del raw["space"]["sparsity_weight"]
    spec = parse(raw)
    trial = FakeTrial("denoising")
    assert SearchSpace(spec.space)(trial) == {"variant": "denoising"}
    assert trial.asked == ["latent_dim", "lr", "noise_factor"]


ERRORS = [
    ("unknown top-level key", with_("num_sample", 3), "unknown key 'num_sample' (did you mean 'num_samples'?"),
    ("unknown train key", with_("train.epoch", 3), "unknown key 'train.epoch' (did you mean 'train.epochs'?"),
    ("unknown space key", with_("space.learning_rate", 0.1), "unknown key 'space.learning_rate'"),
    ("unknown variant", with_("space.variant", {"choice": ["vanilla", "vae"]}), "unknown variant 'vae'"),
    ("misspelt variant", with_("space.variant", "vanila"), "did you mean 'vanilla'"),
    ("empty range", with_("space.lr", {"loguniform": [1e-3, 1e-3]}), "the range [0.001, 0.001] is empty"),
    ("inverted range", with_("space.latent_dim", {"int": [64, 2]}), "the range [64, 2] is inverted; write [2, 64]"),
    ("log range touching 0", with_("space.lr", {"loguniform": [0, 1e-2]}), "a log range must be above 0"),
    ("log int touching 0", with_("space.latent_dim", {"logint": [0, 8]}), "a log range must be above 0"),
    ("latent_dim below 1", with_("space.latent_dim", {"choice": [0, 8]}), "latent_dim must be between 1 and 4096, got 0"),
    ("latent_dim of 10^9", with_("space.latent_dim", 10**9), "latent_dim must be between 1 and 4096, got 1000000000"),
    ("latent_dim range above 4096", with_("space.latent_dim", {"logint": [2, 10**9]}), "between 1 and 4096"),
    ("latent_dim real range", with_("space.latent_dim", {"uniform": [2, 8]}), "latent_dim is an integer"),
    ("lr not positive", with_("space.lr", -0.1), "lr must be > 0"),
    ("negative noise", with_("space.noise_factor", {"uniform": [-0.5, 0.5]}), "noise_factor must be >= 0"),
    ("non-numeric bound", with_("space.lr", {"loguniform": ["small", 1e-2]}), "must be a number, got 'small'"),
    ("empty choice", with_("space.latent_dim", {"choice": []}), "choice must be a non-empty list"),
    ("bare list", with_("space.latent_dim", [2, 8]), "write {choice: [2, 8]}"),
    ("two distributions", with_("space.lr", {"uniform": [0.1, 0.2], "loguniform": [0.1, 0.2]}), "exactly one of"),
    ("unused conditional", with_("space.variant", "vanilla"), "space.noise_factor is only used by the denoising"),
    ("gpu fraction above 1", with_("resources.gpu", 2), "resources.gpu=2.0 is outside (0, 1]"),
    ("gpu fraction negative", with_("resources.gpu", -0.5), "is outside (0, 1]"),
    ("unknown execution", with_("resources.execution", "fused"), "unknown resources.execution 'fused'"),
    ("negative epochs", with_("train.epochs", -1), "train.epochs must be >= 1, got -1"),
    ("zero epochs", with_("train.epochs", 0), "train.epochs must be >= 1"),
    ("negative batch size", with_("train.batch_size", -128), "batch_size must be >= 1"),
    ("wrong type batch size", with_("train.batch_size", "large"), "batch_size must be an integer"),
    ("unknown dataset", with_("dataset", "cifar10"), "unknown dataset 'cifar10'"),
    ("grace beyond epochs", with_("scheduler.grace_period", 9), "grace_period=9 exceeds train.epochs=3"),
    ("reduction factor 1", with_("scheduler.reduction_factor", 1), "reduction_factor must be > 1"),
    ("unknown report", with_("scheduler.report", "rung"), "unknown scheduler.report 'rung'"),
    ("checkpoint interval zero", with_("scheduler.checkpoint_every_s", 0), "checkpoint_every_s must be a positive"),
    ("checkpoint interval text", with_("scheduler.checkpoint_every_s", "often"), "must be a number, got 'often'"),
    ("num_samples zero", with_("num_samples", 0), "num_samples must be >= 1"),
    ("num_samples text", with_("num_samples", "many"), "num_samples must be an integer"),
    ("section not a mapping", with_("searcher", 3), "searcher must be a mapping of keys, not a number"),
    ("missing space", without("space"), "missing `space`"),
    ("missing name", without("name"), "missing `name`"),
    ("bad name", with_("name", "my sweep/1"), "must be letters, digits"),
    ("boolean as number", with_("max_failures", True), "max_failures must be an integer"),
    ("simulate not a mapping", with_("simulate", True), "simulate must be a mapping of keys, not a boolean"),
    ("simulate negative time", with_("simulate.seconds_per_epoch", -1), "simulate.seconds_per_epoch must be >= 0"),
    ("simulate text time", with_("simulate.seconds_per_epoch", "fast"), "seconds_per_epoch must be a number"),
    ("simulate unknown key", with_("simulate.seconds", 1), "unknown key 'simulate.seconds'"),
]


@pytest.mark.parametrize("raw,message", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_bad_sweep_file_is_one_line_naming_the_problem(raw, message):
    with pytest.raises(SpecError) as err:
        parse(raw, source="f.yaml")
    text = str(err.value)
    assert message in text and "\n" not in text and text.startswith("f.yaml: ")


@pytest.mark.parametrize("content,message", [
    ("name: [unclosed\n", "malformed YAML at line"),
    ("", "the file is empty"),
    ("- just\n- a list\n", "must be a mapping of keys (name, space, ...), not a list"),
    ("42\n", "not a number"),
])
def test_unusable_files(tmp_path, content, message):
    path = tmp_path / "s.yaml"
    path.write_text(content)
    with pytest.raises(SpecError) as err:
        load(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load(tmp_path / "absent.yaml")
    with pytest.raises(SpecError, match="is a folder"):
        load(tmp_path)


@pytest.mark.parametrize("item,message", [("epochs", "expected key=value"), ("name.x=1", "name is a value, not a section"),
                                          ("train.epochs=[1", "not valid YAML")])
def test_bad_overrides(item, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[")):
        apply_override(copy.deepcopy(BASE), item)


def test_overrides_reach_nested_keys():
    raw = copy.deepcopy(BASE)
    apply_override(raw, "train.epochs=7")
    apply_override(raw, "space.lr={loguniform: [1e-3, 1e-2]}")
    spec = parse(raw)
    assert spec.epochs == 7 and spec.space["lr"].high == 1e-2


def test_yes_no_on_off_are_words_and_only_true_false_are_booleans(tmp_path):
    """YAML 1.2's booleans: a sweep named `no`, or a choice of `on`, keeps the word the user wrote."""
    raw = copy.deepcopy(BASE)
    apply_override(raw, "name=no")
    apply_override(raw, "train.cuda_graphs=False")
    spec = parse(raw)
    assert spec.name == "no" and spec.train["cuda_graphs"] is False
    path = tmp_path / "s.yaml"
    path.write_text("name: off\ntrain: {epochs: 2, cuda_graphs: true}\n"
                    "space: {variant: {choice: [vanilla]}, latent_dim: {choice: [on, 'yes', 4]}}\n")
    with pytest.raises(SpecError, match="latent_dim"):  # 'on' is no latent size, and is not read as 1
        load(path)
    path.write_text("name: off\ntrain: {epochs: 2, cuda_graphs: TRUE}\nspace: {variant: {choice: [vanilla]}}\n")
    spec = load(path)
    assert spec.name == "off" and spec.train["cuda_graphs"] is True


def test_null_override_removes_a_key():
    raw = copy.deepcopy(BASE)
    apply_override(raw, "space.noise_factor=null")
    assert "noise_factor" not in raw["space"]


def test_points_must_set_every_sampled_parameter_inside_the_space():
    ok = with_("points", [{"variant": "sparse", "latent_dim": 8, "lr": 1e-3, "sparsity_weight": 1e-3}])
    assert parse(ok).points == ({"variant": "sparse", "latent_dim": 8, "lr": 1e-3, "sparsity_weight": 1e-3},)
    with pytest.raises(SpecError, match="does not set sparsity_weight"):
        parse(with_("points", [{"variant": "sparse", "latent_dim": 8, "lr": 1e-3}]))
    with pytest.raises(SpecError, match=r"points\[0\].lr=1.0 is outside space.lr"):
        parse(with_("points", [{"variant": "vanilla", "latent_dim": 8, "lr": 1.0}]))


@pytest.mark.parametrize("grace,rf,max_t,brackets,expected", [
    (1, 2, 8, 1, (1, 2, 4, 8)),
    (2, 2, 8, 1, (2, 4, 8)),
    (1, 3, 30, 1, (1, 3, 9, 27, 30)),  # configs/mnist.yaml: max_t is no rung but ends every survivor
    (2, 3, 10, 1, (2, 6, 10)),
    (1, 1.5, 8, 1, (1, 2, 3, 4, 6, 8)),  # a fractional rung is judged at the first epoch past it
    (1, 2, 8, 2, (1, 2, 4, 8)),  # bracket 1's rungs 2, 4, 8 are bracket 0's too
    (3, 2, 13, 2, (3, 6, 12, 13)),
    (30, 3, 30, 1, (30,)),  # configs/seed.yaml: grace = epochs, no early stopping
])
def test_rung_epochs_are_where_asha_decides(grace, rf, max_t, brackets, expected):
    assert rung_epochs(grace, rf, max_t, brackets) == expected


def _epochs_asha_decides(grace: int, rf: float, max_t: int) -> tuple[int, ...]:
    """Ask Ray's ASHA, through its public scheduler API, at which epochs it stops a trial that turns
    worse than every other from a given epoch on: those are the epochs where it decides."""
    import types

    from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

    asha = AsyncHyperBandScheduler(time_attr="epoch", metric="val_loss", mode="min", grace_period=grace,
                                   reduction_factor=rf, max_t=max_t, brackets=1)

    def stopped_at(trial_id: str, worse_from: int) -> int:
        trial = types.SimpleNamespace(trial_id=trial_id)
        asha.on_trial_add(None, trial)
        for epoch in range(1, max_t + 1):
            result = {"epoch": epoch, "val_loss": float(epoch >= worse_from)}
            if asha.on_trial_result(None, trial, result) == TrialScheduler.STOP:
                return epoch
        return max_t

    stopped_at("reference", max_t + 1)
    return tuple(sorted({stopped_at(f"probe-{e}", e) for e in range(1, max_t + 1)}))


@pytest.mark.parametrize("grace,rf,max_t", [(1, 2, 8), (1, 3, 30), (2, 1.7, 40), (3, 2, 13), (4, 4, 100)])
def test_rung_epochs_are_the_epochs_where_rays_asha_stops_trials(grace, rf, max_t):
    assert rung_epochs(grace, rf, max_t) == _epochs_asha_decides(grace, rf, max_t)


def test_report_defaults_to_rungs_and_epoch_reports_every_epoch():
    spec = parse(with_("train.epochs", 8))
    assert spec.scheduler.report == "rungs" and spec.scheduler.checkpoint_every_s == 60
    assert spec.report_epochs == (1, 3, 8)
    assert parse(with_("scheduler.report", "epoch")).report_epochs is None
