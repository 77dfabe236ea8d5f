"""Results' derived views on hand-built trials tables (no Ray): the Pareto front of val_loss against latent_dim."""
import math

import pandas as pd

from sweep.results import HYPER_DTYPES, TRIAL_COLUMNS, Results


def _results(rows) -> Results:
    trials = pd.DataFrame([dict(zip(("trial_id", "variant", "latent_dim", "status", "final_val_loss"), row))
                           for row in rows], columns=TRIAL_COLUMNS).astype(HYPER_DTYPES)
    return Results(home=None, spec=None, trials=trials, epochs=pd.DataFrame(), best_trial=None, best_config=None)


TRIALS = [
    # vanilla: 2 -> 8 -> 32 each lower; v8b has 8's loss too (a tie, kept); v16 is beaten by v8 (larger and worse)
    ("v2", "vanilla", 2, "completed", 0.040),
    ("v8", "vanilla", 8, "completed", 0.020),
    ("v8b", "vanilla", 8, "completed", 0.020),
    ("v8c", "vanilla", 8, "completed", 0.025),  # same latent_dim, higher loss: dominated by v8
    ("v16", "vanilla", 16, "completed", 0.022),  # dominated by v8
    ("v32", "vanilla", 32, "completed", 0.012),
    ("v4s", "vanilla", 4, "stopped", 0.030),  # on the front only when stopped trials count
    ("v64x", "vanilla", 64, "diverged", math.nan),
    ("v1x", "vanilla", 1, "diverged", 0.001),  # a finite loss before it diverged: never on the front
    ("v3e", "vanilla", 3, "error", math.nan),
    # conv: its own front, whatever vanilla's losses are
    ("c16", "conv", 16, "completed", 0.010),
    ("c32", "conv", 32, "completed", 0.008),
    ("c64", "conv", 64, "completed", 0.009),  # dominated by c32
]


def test_pareto_keeps_exactly_the_non_dominated_completed_trials_per_variant():
    front = _results(TRIALS).pareto()
    assert list(front["trial_id"]) == ["c16", "c32", "v2", "v8", "v8b", "v32"]
    assert list(front.columns) == TRIAL_COLUMNS
    assert list(front["latent_dim"]) == [16, 32, 2, 8, 8, 32]


def test_pareto_adds_stopped_trials_on_request_and_never_diverged_or_errored_ones():
    front = _results(TRIALS).pareto(include_stopped=True)
    assert list(front["trial_id"]) == ["c16", "c32", "v2", "v4s", "v8", "v8b", "v32"]
    stopped_wins = _results([("a", "sparse", 8, "completed", 0.02), ("b", "sparse", 4, "stopped", 0.01)])
    assert list(stopped_wins.pareto()["trial_id"]) == ["a"]
    assert list(stopped_wins.pareto(include_stopped=True)["trial_id"]) == ["b"]


def test_pareto_of_a_sweep_without_a_usable_trial_is_an_empty_table():
    front = _results([("x", "vanilla", 2, "diverged", math.nan), ("y", "conv", 8, "error", math.nan)]).pareto()
    assert front.empty and list(front.columns) == TRIAL_COLUMNS
