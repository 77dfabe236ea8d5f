"""SweepSpec.space -> an Optuna define-by-run function: conditional, so a trial only has the parameters it uses.

`noise_factor` is sampled only for denoising trials and `sparsity_weight` only for sparse ones, so the
study, the tables and the importance analyses never attribute an effect to a parameter a trial did not use.
"""
from __future__ import annotations

from .spec import CONDITIONAL, SEARCHED, Param


class SearchSpace:
    """A picklable define-by-run space (Ray saves the searcher, and with it the space, by pickling)."""

    def __init__(self, params: dict[str, Param]):
        self.params = dict(params)

    def __call__(self, trial) -> dict:
        """Suggest through `trial`; return the fixed values, which Ray merges into the trial's config."""
        fixed = {}
        chosen = {}
        for name in SEARCHED:
            param = self.params.get(name)
            if param is None:
                continue
            if name in CONDITIONAL and chosen["variant"] != CONDITIONAL[name]:
                continue
            value = self._suggest(trial, param)
            chosen[name] = value
            if param.kind == "fixed":
                fixed[name] = value
        return fixed

    @staticmethod
    def _suggest(trial, param: Param):
        if param.kind == "fixed":
            return param.values[0]
        if param.kind == "choice":
            return trial.suggest_categorical(param.name, list(param.values))
        if param.kind in ("int", "logint"):
            return trial.suggest_int(param.name, int(param.low), int(param.high), step=int(param.step or 1),
                                     log=param.log)
        return trial.suggest_float(param.name, param.low, param.high, step=param.step, log=param.log)

    def searched(self) -> list[str]:
        """Names of the parameters that are sampled (not fixed)."""
        return [n for n, p in self.params.items() if p.kind != "fixed"]
