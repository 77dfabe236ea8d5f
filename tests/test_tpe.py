"""sweep.tpe: the NumPy TPE the searcher suggests from (the conditional space, ranking, bounded history)."""
import math

import numpy as np
import pytest

from sweep import tpe as tpe_mod
from sweep.spec import load, parse
from sweep.tpe import TPE, dims_of

MNIST = load("configs/mnist.yaml").space  # the four variants, conditional noise_factor and sparsity_weight


def grid_space():
    return parse({"name": "g", "space": {"variant": "vanilla", "latent_dim": {"logint": [2, 64]},
                                         "lr": {"uniform": [0.1, 0.5], "step": 0.1}}}).space


def test_the_conditional_parameters_belong_to_their_variant():
    dims, fixed = dims_of(MNIST)
    assert [d.name for d in dims] == ["variant", "latent_dim", "lr", "noise_factor", "sparsity_weight"]
    variants = dims[0].choices
    assert dims[3].needs == variants.index("denoising") and dims[4].needs == variants.index("sparse")
    assert fixed == {}
    model = TPE(MNIST, seed=0, n_startup_trials=10)
    for _ in range(200):
        params = model.random()
        assert ("noise_factor" in params) == (params["variant"] == "denoising")
        assert ("sparsity_weight" in params) == (params["variant"] == "sparse")
        assert 1e-4 <= params["lr"] <= 1e-2 and params["latent_dim"] in (2, 4, 8, 16, 32, 64)


def test_a_fixed_variant_keeps_only_its_own_conditional_parameter():
    space = parse({"name": "d", "space": {"variant": "denoising", "lr": {"loguniform": [1e-4, 1e-2]},
                                          "noise_factor": {"uniform": [0.1, 0.7]}}}).space
    dims, fixed = dims_of(space)
    assert [d.name for d in dims] == ["lr", "noise_factor"] and dims[1].needs is None
    assert fixed == {"variant": "denoising"}


def test_integers_and_stepped_numbers_land_on_their_grid_inside_the_range():
    model = TPE(grid_space(), seed=1, n_startup_trials=5)
    rng = np.random.default_rng(0)
    for i in range(300):
        params = model.suggest() if i >= 5 else model.random()
        assert isinstance(params["latent_dim"], int) and 2 <= params["latent_dim"] <= 64
        assert any(math.isclose(params["lr"], v) for v in (0.1, 0.2, 0.3, 0.4, 0.5))
        model.add(params, 3, rng.random())
    low, high = (np.array([getattr(d, end) for d in model.dims]) for end in ("low", "high"))
    assert model.decode(low) == {"latent_dim": 2, "lr": pytest.approx(0.1)}  # each end has its half step
    assert model.decode(high) == {"latent_dim": 64, "lr": pytest.approx(0.5)}


def test_encode_and_decode_are_inverse():
    model = TPE(MNIST, seed=0, n_startup_trials=1)
    for _ in range(50):
        params = model.random()
        assert model.decode(model.encode(params)) == pytest.approx(params)


def test_random_until_n_startup_trials_have_finished_then_tpe(monkeypatch):
    model = TPE(MNIST, seed=0, n_startup_trials=3)
    calls = []
    monkeypatch.setattr(tpe_mod, "_Parzen", lambda *a: calls.append(1) or (_ for _ in ()).throw(RuntimeError))
    for _ in range(3):
        model.add(model.suggest(), 1, 0.5)  # random: no density built
    with pytest.raises(RuntimeError):
        model.suggest()
    assert calls


def test_the_same_seed_and_history_give_the_same_suggestions():
    def run(seed):
        model, out = TPE(MNIST, seed=seed, n_startup_trials=5), []
        for i in range(40):
            params = model.suggest()
            out.append(params)
            model.add(params, 1 + i % 3, params["lr"])
        return out

    assert run(3) == run(3) and run(3) != run(4)


def test_tpe_concentrates_where_the_values_are_low():
    model = TPE(MNIST, seed=0, n_startup_trials=20)
    for _ in range(200):
        params = model.suggest()
        model.add(params, 5, abs(math.log10(params["lr"]) + 3) + (params["variant"] != "conv"))
    late = [model.suggest() for _ in range(100)]
    assert np.median([abs(math.log10(p["lr"]) + 3) for p in late]) < 0.25  # random: 0.5
    assert sum(p["variant"] == "conv" for p in late) > 50  # random: 25


def test_a_trial_that_got_further_outranks_a_lower_value_at_an_earlier_epoch():
    model = TPE(MNIST, seed=0, n_startup_trials=1)
    model.add(model.random(), 1, 0.01)
    model.add(model.random(), 30, 0.5)
    assert [b[2] for b in model._best] == [1, 0]


def test_the_best_trials_stay_in_the_model_however_long_the_history():
    model = TPE(MNIST, seed=0, n_startup_trials=1)
    best = model.random()
    model.add(best, 30, 0.001)
    for i in range(2000):
        model.add(model.random(), 1 + i % 5, 1.0 + i)
    assert model.n == 2001 and len(model._best) == tpe_mod.N_BEST and model._best[0][2] == 0


def test_running_trials_are_told_as_the_worst_so_suggestions_spread():
    model = TPE(MNIST, seed=0, n_startup_trials=5)
    for _ in range(60):
        params = model.random()
        model.add(params, 5, abs(math.log10(params["lr"]) + 3))
    alone = [model.suggest() for _ in range(30)]
    lie = np.array([model.encode(p) for p in alone])
    crowded = [model.suggest(np.repeat(lie, 3, axis=0)) for _ in range(30)]
    spread = lambda ps: np.std([math.log10(p["lr"]) for p in ps])  # noqa: E731
    assert spread(crowded) > spread(alone)
