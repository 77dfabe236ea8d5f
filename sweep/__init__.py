"""sweep: Ray Tune + Optuna (TPE) + ASHA around aemodels.train, with results as pandas tables.

    from sweep import load_results
    found = load_results("quick")            # results/quick/
    found.trials.sort_values("final_val_loss").head()
    found.best_config                        # an aemodels.TrainConfig

Importing this package starts nothing and imports little: the packed-trial proxies that Ray runs
import `sweep.packed` without torch, so the names below load on first use.
"""
import importlib

_EXPORTS = {"Results": "results", "load_results": "results", "SpecError": "spec", "SweepSpec": "spec", "load": "spec"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'sweep' has no attribute {name!r}")
