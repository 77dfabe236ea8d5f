"""`warm_start: <sweep>`: a new sweep's study starts with the finished trials of an older sweep that fit its space.

Owns choosing those trials and adding them to the new study (Optuna's `create_trial` / `add_trial`), and the
table of them (warm_start.parquet). They carry a `warm_start` user attr and no `tune_trial_id`, so TPE learns
from them and never proposes them again, but they count toward no budget and are none of the new sweep's trials.
"""
from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd

from . import results as results_mod
from .errors import ResultsError, SweepError
from .searcher import FINISHED, distributions
from .study import open_storage, storage_error, study_path, study_url
from .spec import CONDITIONAL, SEARCHED, Param, SweepSpec

TABLE = "warm_start.parquet"  # in the new sweep's folder: the trials its study started with, apart from its own


def fitting_params(config: dict, space: dict[str, Param]) -> dict | None:
    """The searched values a trial of `space` would have for an old trial's full `config`, or None when the
    old trial lies outside the space (a value out of range, a parameter the space lacks or fixes otherwise)."""
    variant = config.get("variant", space["variant"].values[0] if "variant" in space else None)
    params = {}
    for name in SEARCHED:
        param = space.get(name)
        if name in CONDITIONAL and CONDITIONAL[name] != variant:
            continue
        value = config.get(name)
        if param is None:
            if value is not None:  # the new sweep would train it at TrainConfig's default instead
                return None
            continue
        if value is None or not _within(value, param):
            return None
        if param.kind != "fixed":
            params[name] = value
    return params


def _within(value, param: Param) -> bool:
    if param.kind in ("fixed", "choice"):
        return value in param.values
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not param.low <= value <= param.high:
        return False
    if param.kind in ("int", "logint"):
        return float(value).is_integer() and (int(value) - int(param.low)) % int(param.step or 1) == 0
    return True


def warm_trials(spec: SweepSpec) -> tuple[str, list[optuna.trial.FrozenTrial]]:
    """The old sweep's name and its COMPLETE and PRUNED trials that fit `spec`'s space, as trials for the new
    study. Raises SweepError (one line) for an unknown old sweep, an unreadable study, or no trial that fits."""
    try:
        old_home = results_mod.find_home(spec.warm_start, spec.storage_path)
        old = results_mod.read_spec(old_home)
    except (SweepError, ResultsError) as exc:
        raise SweepError(f"warm_start: {exc}") from None
    path = study_path(old_home)
    try:
        study = optuna.load_study(study_name=old.name, storage=open_storage(study_url(path), writer=False))
    except Exception as exc:
        raise SweepError(f"warm_start: the study {path} of sweep {old.name!r} cannot be read ({storage_error(exc)}); "
                         "restore it or name another sweep") from None
    fixed = {n: p.values[0] for n, p in old.space.items() if p.kind == "fixed"}
    found = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state not in FINISHED or "tune_trial_id" not in trial.user_attrs:
            continue  # only the old sweep's own trials: not those it was warm-started with
        params = fitting_params({**fixed, **trial.params}, spec.space)
        if params is None:
            continue
        values = {step: v for step, v in trial.intermediate_values.items() if step <= spec.epochs}
        found.append(optuna.trial.create_trial(
            state=trial.state, value=trial.value, params=params,
            distributions=distributions(spec.space, params), intermediate_values=values,
            user_attrs={"warm_start": old.name, "status": trial.user_attrs.get("status"),
                        "epochs": trial.user_attrs.get("epochs", 0),
                        "warm_start_trial_id": trial.user_attrs["tune_trial_id"]}))
    if not found:
        raise SweepError(f"warm_start: none of sweep {old.name!r}'s finished trials fits this sweep's space "
                         "(a parameter missing or out of its range); widen the space or name another sweep")
    return old.name, found


def seed_study(home: Path, spec: SweepSpec, trials: list[optuna.trial.FrozenTrial]) -> None:
    """Create the new sweep's study holding `trials`, and write warm_start.parquet listing them."""
    study = optuna.create_study(study_name=spec.name, storage=open_storage(study_url(study_path(home))),
                                direction="minimize", load_if_exists=True, sampler=optuna.samplers.RandomSampler())
    study.add_trials(trials)
    rows = [{"warm_start": t.user_attrs["warm_start"], "trial_id": t.user_attrs["warm_start_trial_id"],
             "status": t.user_attrs.get("status"), "epochs": t.user_attrs.get("epochs"),
             "final_val_loss": t.value, **spec.trial_params(t.params)} for t in trials]
    table = pd.DataFrame(rows)
    results_mod.write_file(home / TABLE, lambda path: table.to_parquet(path, index=False))
