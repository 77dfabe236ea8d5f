"""sweep: Ray Tune + Optuna (TPE) + ASHA around aemodels.train, with results as pandas tables.

    from sweep import load_results
    found = load_results("quick")            # results/quick/
    found.trials.sort_values("final_val_loss").head()
    found.best_config                        # an aemodels.TrainConfig

Importing this package starts nothing: Ray starts only when a sweep runs.
"""
from .results import Results, load_results
from .spec import SpecError, SweepSpec, load

__all__ = ["Results", "load_results", "SpecError", "SweepSpec", "load"]
