"""A finished sweep -> results/<name>/report/: PNG figures and an index.html that needs nothing but them.

Reads the tables (Results), the Optuna study and the trials' checkpoints; writes only under report/.
It trains nothing unless a variant's best trial has no readable checkpoint (then that config once).
"""
from __future__ import annotations

import contextlib
import html
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import LogFormatterSciNotation, LogLocator, MaxNLocator, NullFormatter

from aemodels import TrainState, load_dataset, train
from aemodels.models import VARIANTS
from aemodels.registry import REGISTRY

from .experiment import EXPERIMENT_DIR
from .results import Results, ranked_trials, write_file
from .study import open_storage, storage_error, study_path, study_url
from .spec import CONDITIONAL, SEARCHED, Param

REPORT_DIR = "report"
DPI = 110
NOISE_SIGMAS = (0.3, 0.5, 0.7)  # the denoising figure's test noise levels (std of the added Gaussian)
NOISE_SEED = 0
NEAR_ZERO = 1e-2  # |z| below this counts as an inactive latent unit
EDGE_FRACTION = 0.05  # a best value within 5% of a range's end (log-scaled for log ranges) is on the edge
MIN_IMPORTANCE_TRIALS = 5  # complete trials of one variant needed before its importances mean anything
END_LABELS_UP_TO = 8  # learning curves of this many trials or fewer are labelled with their latent_dim
LOSS_COLUMNS = ("final_train_loss", "final_val_loss", "best_val_loss")
# The seed article's Part 3 table ("Deconstructing Autoencoders from Scratch, Part 3: What the Bottleneck
# Learns", https://soveshmohapatra.com/projects/autoencoders-benchmark/): (variant, latent_dim, final loss) after
# 30 epochs on 5,000 MNIST images, batch 128, Adam lr 1e-3. Its "final loss" is the training objective (the
# sparse row says MSE+L1), not a validation loss, so it is a reference point, not the same measurement.
SEED_ARTICLE_POINTS = (("vanilla", 2, 0.0401), ("vanilla", 32, 0.0125), ("denoising", 32, 0.0191),
                       ("sparse", 32, 0.0130), ("conv", 32, 0.0083))
SEED_ARTICLE_TRAINING = {"epochs": 30, "train_subset": 5000, "batch_size": 128}
LOG_X_ABOVE = 8  # latent dims spanning more than this factor are drawn on a log axis
TABLE_COLUMNS = ("variant", "trial_id", "status", "epochs", *SEARCHED[1:], *LOSS_COLUMNS)


# ---- the trained models the figures look at --------------------------------------------------------

@dataclass
class Model:
    """A trained model of one trial, with where it came from (a checkpoint, or retraining)."""

    role: str  # "best vanilla", "best vanilla with latent_dim 2", ...
    row: pd.Series  # the trial's row of the trials table
    module: torch.nn.Module  # in eval mode, on the CPU
    source: str

    @property
    def variant(self) -> str:
        return self.row["variant"]

    @property
    def label(self) -> str:
        return f"{self.variant}, latent_dim {int(self.row['latent_dim'])}"


def chosen_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials whose models are shown: the best of each variant, and its best with latent_dim 2 if other."""
    ranked = ranked_trials(trials)
    best = ranked.groupby("variant", sort=False).head(1).assign(role=lambda t: "best " + t["variant"])
    two = ranked[ranked["latent_dim"] == 2].groupby("variant", sort=False).head(1)
    two = two[~two["trial_id"].isin(best["trial_id"])].assign(role=lambda t: "best " + t["variant"] +
                                                              " with latent_dim 2")
    order = {v: i for i, v in enumerate(VARIANTS)}
    chosen = pd.concat([best, two], ignore_index=True)
    return chosen.assign(_order=chosen["variant"].map(order)).sort_values(["_order", "latent_dim"], kind="stable") \
        .drop(columns="_order").reset_index(drop=True)


def checkpoint_state(home: Path, trial_id: str) -> tuple[Optional[TrainState], str]:
    """The trial's newest readable checkpoint state (an unreadable one falls back to the one before)."""
    folders = sorted(home.glob(f"{EXPERIMENT_DIR}*/*_{trial_id}_*"))  # ray/, or ray-<driver>/ of another driver
    checkpoints = sorted((c for f in folders for c in f.glob("checkpoint_*")), key=lambda c: c.name, reverse=True)
    for checkpoint in checkpoints:
        # torch.load raises anything from OSError to UnpicklingError or RuntimeError for a cut-short file
        with contextlib.suppress(Exception):
            return TrainState.load(checkpoint / "state.pt"), checkpoint.name
    return None, "no readable checkpoint"


def load_models(results: Results, say: Callable[[str], None] = print) -> list[Model]:
    models = []
    for _, row in chosen_trials(results.trials).iterrows():
        state, where = checkpoint_state(results.home, row["trial_id"])
        if state is not None and state.config.variant != row["variant"]:
            state, where = None, f"{where} holds a {state.config.variant} model"
        if state is not None:
            module, source = state.to_module(), f"loaded from {where} (epoch {state.epoch})"
        else:
            params = {k: _plain(row[k]) for k in SEARCHED}
            config = results.spec.train_config(params)
            say(f"report: trial {row['trial_id']} has no readable checkpoint; retraining its config "
                f"({config.variant}, {config.epochs} epochs)")
            trained = train(config)
            module = trained.model
            source = f"retrained ({where}): {trained.status} after {len(trained.history)} epochs, " \
                     f"val_loss {trained.val_loss:.4g}"
        models.append(Model(row["role"], row.drop("role"), module.cpu().eval(), source))
    return models


def _plain(value):
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


# ---- numbers behind the figures -------------------------------------------------------------------

def digit_examples(labels: torch.Tensor) -> torch.Tensor:
    """Indices of the first test image of each digit class, 0 to 9."""
    return torch.stack([torch.nonzero(labels == c)[0, 0] for c in torch.unique(labels)])


@torch.no_grad()
def reconstruct(module: torch.nn.Module, images: torch.Tensor, batch: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_hat, z) of images in [0, 1]; the module must be in eval mode (a denoising AE then adds no noise)."""
    parts = [module(images[i:i + batch]) for i in range(0, len(images), batch)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def add_noise(images: torch.Tensor, sigma: float, seed: int = NOISE_SEED) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (images + sigma * torch.randn(images.shape, generator=generator)).clamp(0.0, 1.0)


def project_2d(z: torch.Tensor) -> tuple[np.ndarray, tuple[str, str]]:
    """Codes as 2-D points: themselves when 2-D, else their first two principal components (exact SVD)."""
    if z.shape[1] == 2:
        return z.numpy(), ("z[0]", "z[1]")
    if z.shape[1] == 1:
        return np.column_stack([z[:, 0].numpy(), np.zeros(len(z))]), ("z[0]", "")
    centred = z - z.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    share = (s ** 2 / (s ** 2).sum()).tolist()
    return (centred @ vh[:2].T).numpy(), (f"PC 1 ({share[0]:.0%} of variance)", f"PC 2 ({share[1]:.0%})")


def edge_flags(rows: pd.DataFrame, space: dict[str, Param]) -> list[dict]:
    """Best values at the edge of the searched space (Google's tuning playbook: then widen the space)."""
    flags = []
    for _, row in rows.iterrows():
        for name, param in space.items():
            value = _plain(row.get(name))
            if value is None or param.kind == "fixed" or name == "variant":
                continue
            if param.kind == "choice":
                options = sorted(param.values)
                if len(options) >= 3 and value in (options[0], options[-1]):
                    end = "smallest" if value == options[0] else "largest"
                    flags.append({"trial_id": row["trial_id"], "variant": row["variant"], "param": name,
                                  "text": f"{name}={value:.4g} is the {end} of the options {list(param.values)}"})
                continue
            low, high = param.low, param.high
            scale = (lambda v: math.log(v)) if param.log else (lambda v: v)
            where = (scale(value) - scale(low)) / (scale(high) - scale(low))
            if where <= EDGE_FRACTION or where >= 1 - EDGE_FRACTION:
                end = "bottom" if where <= EDGE_FRACTION else "top"
                flags.append({"trial_id": row["trial_id"], "variant": row["variant"], "param": name,
                              "text": f"{name}={value:.4g} lies in the {end} {EDGE_FRACTION:.0%} of its range "
                                      f"[{low:.4g}, {high:.4g}]{' (log scale)' if param.log else ''}"})
    return flags


def param_importances(study, variants) -> tuple[dict[str, dict[str, float]], dict[str, str], str]:
    """Per variant, Optuna's importances over that variant's COMPLETE trials: (importances, notes, evaluator).

    The space is conditional (noise_factor only for denoising, ...), so each variant is evaluated alone,
    in an in-memory copy of the study holding its complete trials only.
    """
    import optuna

    evaluator, name = _importance_evaluator()
    found, notes = {}, {}
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    for variant in variants:
        own = [t for t in complete if t.params.get("variant", variant) == variant]
        varying = sorted(p for p in {p for t in own for p in t.params if p != "variant"}
                         if len({t.params.get(p) for t in own}) > 1)
        if len(own) < MIN_IMPORTANCE_TRIALS:
            notes[variant] = (f"{len(own)} complete trial{'s' if len(own) != 1 else ''}; importances need at least "
                              f"{MIN_IMPORTANCE_TRIALS}, skipped")
            continue
        if len(varying) < 2:
            notes[variant] = (f"only {varying[0] if varying else 'no parameter'} varies across its {len(own)} "
                              "complete trials, so there is nothing to rank; skipped")
            continue
        with _quiet_optuna():
            copy = optuna.create_study(direction=study.direction)
            copy.add_trials(own)
            if isinstance(evaluator, optuna.importance.PedAnovaImportanceEvaluator):
                # at least two trials in the top quantile, else the "top" is one trial's values
                evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=max(0.1, 2 / len(own)))
            found[variant] = optuna.importance.get_param_importances(copy, evaluator=evaluator, params=varying)
        notes[variant] = f"{len(own)} complete trials, {len(varying)} varying parameters"
    return found, notes, name


def _importance_evaluator():
    import optuna

    try:
        import sklearn  # noqa: F401  (fANOVA fits a random forest)
    except ImportError:
        return optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA"
    return optuna.importance.FanovaImportanceEvaluator(seed=0), "fANOVA"


@contextlib.contextmanager
def _quiet_optuna():
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        optuna.logging.set_verbosity(level)


def load_study(results: Results):
    """The sweep's Optuna study, or None with the reason."""
    import optuna

    path = study_path(results.home)
    if not path.is_file():
        return None, f"no {path.name} in {results.home}"
    try:
        with _quiet_optuna():
            storage = open_storage(study_url(path), writer=False)
            return optuna.load_study(study_name=results.spec.name, storage=storage), ""
    except Exception as exc:  # KeyError (no such study), a journal's ValueError / OSError, SQLAlchemy's errors
        return None, f"cannot open the study {results.spec.name!r} in {path} ({storage_error(exc)})"


# ---- figures: each takes its data and returns a Figure -------------------------------------------

def _figure(width: float, height: float) -> Figure:
    # A bare Figure (no pyplot): no global figure registry to leak into; saved through Agg.
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


class _PlainLogFormatter(LogFormatterSciNotation):
    """Log-axis labels as plain numbers (0.03, not 3x10^-2), on the ticks matplotlib would label anyway."""

    def __call__(self, x, pos=None):
        return f"{x:g}" if super().__call__(x, pos) else ""


def _log_axis(axis, integer: bool = False) -> None:
    """A log axis with readable labels: powers of two for integers (latent_dim), plain numbers for losses."""
    if integer:
        axis.set_major_locator(LogLocator(base=2))
        axis.set_major_formatter(lambda v, _: f"{v:g}")
        axis.set_minor_formatter(NullFormatter())
    else:
        axis.set_major_formatter(_PlainLogFormatter())
        axis.set_minor_formatter(_PlainLogFormatter(minor_thresholds=(1, 0.4)))


def _room_on_top(ax, share: float = 0.15) -> None:
    """Raise a log y-axis's top so the upper `share` of the plot is free for markers of losses that are NaN."""
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * (high / low) ** (share / (1 - share)))


def _color(variant: str) -> str:
    return REGISTRY[variant].color if variant in REGISTRY else "tab:gray"


def learning_curves(trials: pd.DataFrame, epochs: pd.DataFrame, max_epochs: int, rungs=()) -> Figure:
    """val_loss per epoch of every trial, coloured by variant; where ASHA stopped a trial, and where one diverged."""
    fig = _figure(9, 5.2)
    ax = fig.add_subplot()
    alpha = 0.9 if len(trials) <= 20 else max(0.25, 20 / len(trials))
    status = trials.set_index("trial_id")["status"]
    variant = trials.set_index("trial_id")["variant"]
    latent = trials.set_index("trial_id")["latent_dim"]
    label_ends = len(trials) <= END_LABELS_UP_TO
    shared = (trials["variant"].value_counts() > 1).to_dict()
    stopped, diverged, diverged_at_start = [], [], []
    for trial_id, rows in epochs.sort_values("epoch").groupby("trial_id", sort=False):
        if trial_id not in variant.index:
            continue
        loss = pd.to_numeric(rows["val_loss"], errors="coerce")
        finite = rows[np.isfinite(loss)]
        ax.plot(finite["epoch"], finite["val_loss"], color=_color(variant[trial_id]), alpha=alpha, lw=1.2,
                marker="." if len(finite) == 1 else None)
        if label_ends and shared[variant[trial_id]] and len(finite):  # one colour, several curves: which is which
            ax.annotate(f" latent {int(latent[trial_id])}", (finite["epoch"].iloc[-1], finite["val_loss"].iloc[-1]),
                        fontsize=8, color=_color(variant[trial_id]), va="center")
        if status[trial_id] == "stopped" and len(finite):
            stopped.append((finite["epoch"].iloc[-1], finite["val_loss"].iloc[-1], variant[trial_id]))
        elif status[trial_id] == "diverged":
            if len(finite):
                diverged.append((finite["epoch"].iloc[-1], finite["val_loss"].iloc[-1]))
            else:
                diverged_at_start.append(rows["epoch"].iloc[-1])
    for x, y, v in stopped:
        ax.plot(x, y, marker="s", ms=6, mfc="white", mec=_color(v), mew=1.6, ls="none", zorder=3)
    for x, y in diverged:
        ax.plot(x, y, marker="X", ms=9, color="black", ls="none", zorder=4)
    ax.set_yscale("log")
    if diverged_at_start:
        _room_on_top(ax)
    top = ax.get_xaxis_transform()  # x in epochs, y in axes fraction: a strip above every finite loss
    for x in diverged_at_start:
        ax.plot(x, 0.96, marker="X", ms=9, color="black", ls="none", transform=top, clip_on=False, zorder=4)
    for rung in rungs:
        ax.axvline(rung, color="0.6", ls=":", lw=1)
    _log_axis(ax.yaxis)
    right = 0.3 + (0.09 * max_epochs + 0.5 if label_ends and any(shared.values()) else 0)
    ax.set_xlim(0.7, max_epochs + right)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xticks([t for t in ax.get_xticks() if 1 <= t <= max_epochs])  # no epoch ticks beside the end labels
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss (MSE, log scale)")
    ax.grid(True, which="both", alpha=0.25)
    present = [v for v in VARIANTS if v in set(trials["variant"])]
    handles = [Line2D([], [], color=_color(v), lw=2, label=v) for v in present]
    handles.append(Line2D([], [], marker="s", mfc="white", mec="0.3", mew=1.6, ls="none",
                          label=f"stopped by ASHA ({len(stopped)})"))
    if diverged or diverged_at_start:
        handles.append(Line2D([], [], marker="X", color="black", ms=9, ls="none",
                              label=f"diverged ({len(diverged) + len(diverged_at_start)}; last finite loss, "
                                    "or top edge)"))
    if len(rungs):
        handles.append(Line2D([], [], color="0.6", ls=":", label="ASHA rung"))
    no_epochs = int((~trials["trial_id"].isin(epochs["trial_id"])).sum())
    if no_epochs:
        handles.append(Line2D([], [], ls="none", label=f"not shown: {no_epochs} trial{'s' if no_epochs != 1 else ''}\n"
                                                       "without epochs (errored)"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=9)
    ax.set_title(f"Validation loss per epoch, {len(trials)} trials", fontsize=11)
    return fig


def hyperparameter_scatter(trials: pd.DataFrame, space: dict[str, Param]) -> Optional[Figure]:
    """Final val_loss against each searched hyperparameter, coloured by variant (log axes where sampled log)."""
    names = [n for n, p in space.items() if p.kind != "fixed" and n != "variant"]
    if space.get("variant") is not None and space["variant"].kind != "fixed":
        names.append("variant")
    if not names:
        return None
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = _figure(max(4.2 * ncols + 2.2, 7.5), 3.4 * nrows + 0.3)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    rng = np.random.default_rng(0)  # jitter of categorical positions only
    loss = pd.to_numeric(trials["final_val_loss"], errors="coerce").astype(float)
    for ax, name in zip(axes.flat, names):
        param = space[name]
        has = trials[name].notna()
        if name in CONDITIONAL:
            has &= trials["variant"] == CONDITIONAL[name]
        shown = pd.DataFrame({"variant": trials["variant"], "status": trials["status"], "y": loss})[has]
        if param.kind == "choice":
            options = list(param.values)
            shown["x"] = trials.loc[has, name].map({v: i for i, v in enumerate(options)}).astype(float) + \
                rng.uniform(-0.15, 0.15, int(has.sum()))
            ax.set_xticks(range(len(options)), [f"{o:g}" if isinstance(o, float) else str(o) for o in options])
            ax.set_xlim(-0.6, len(options) - 0.4)
        else:
            shown["x"] = trials.loc[has, name].astype(float)
            if param.log:
                ax.set_xscale("log")
                _log_axis(ax.xaxis, integer=param.kind == "logint")
            ax.axvspan(param.low, param.high, color="0.93", zorder=0)  # the searched range
        finite = np.isfinite(shown["y"])
        for variant, mine in shown.groupby("variant", sort=False):
            ok = mine[np.isfinite(mine["y"])]
            done = ok[ok["status"] == "completed"]
            early = ok[ok["status"] != "completed"]
            ax.scatter(done["x"], done["y"], s=36, color=_color(variant), edgecolor="black", lw=0.4, zorder=3)
            ax.scatter(early["x"], early["y"], s=36, facecolor="white", edgecolor=_color(variant), lw=1.5, zorder=3)
        bad = shown[~finite]
        if finite.any():
            ax.set_yscale("log")
            _log_axis(ax.yaxis)
            if len(bad):
                _room_on_top(ax)
        ax.scatter(bad["x"], np.full(len(bad), 0.96), marker="X", s=60, color="black",
                   transform=ax.get_xaxis_transform(), clip_on=False, zorder=4)
        ax.set_xlabel(name + (" (log scale)" if param.log else ""))
        ax.set_ylabel("final val_loss")
        ax.grid(True, which="major", alpha=0.25)
        if name in CONDITIONAL:
            ax.set_title(f"{CONDITIONAL[name]} trials only", fontsize=9)
    for ax in list(axes.flat)[len(names):]:
        ax.remove()
    present = [v for v in VARIANTS if v in set(trials["variant"])]
    handles = [Line2D([], [], marker="o", color=_color(v), mec="black", mew=0.4, ls="none", ms=7, label=v)
               for v in present]
    if (trials["status"].isin(["stopped", "running"]) & np.isfinite(loss)).any():
        handles.append(Line2D([], [], marker="o", mfc="white", mec="0.3", mew=1.5, ls="none", ms=7,
                              label="stopped early\n(loss at its last epoch)"))
    if (~np.isfinite(loss)).any():
        handles.append(Line2D([], [], marker="X", color="black", ls="none", ms=8, label="diverged / errored\n(no loss)"))
    if any(space[n].kind not in ("choice", "fixed") for n in names):
        handles.append(Patch(color="0.88", label="searched range"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=9)
    fig.suptitle("Final val_loss per searched hyperparameter", fontsize=11, x=0.01, ha="left")
    return fig


def trains_like_the_seed_article(spec) -> bool:
    """Whether the sweep's trials train as the seed article's Part 3 did (configs/seed.yaml under any name):
    real MNIST training on the same images, epochs and batch size, so the article's losses are comparable."""
    return (spec.simulate is None and spec.dataset == "mnist"
            and all(spec.train.get(k) == v for k, v in SEED_ARTICLE_TRAINING.items()))


def pareto_figure(trials: pd.DataFrame, front: pd.DataFrame, seed_points=()) -> Optional[Figure]:
    """Final val_loss against latent_dim per variant, each variant's Pareto front (Results.pareto()) as a step
    line; stopped trials hollow; `seed_points` ((variant, latent_dim, loss), ...) as black crosses."""
    loss = pd.to_numeric(trials["final_val_loss"], errors="coerce").astype(float)
    latent = pd.to_numeric(trials["latent_dim"], errors="coerce").astype(float)
    shown = pd.DataFrame({"variant": trials["variant"], "status": trials["status"], "x": latent, "y": loss})
    shown = shown[shown["status"].isin(["completed", "stopped"]) & np.isfinite(shown["y"]) & shown["x"].notna()]
    if shown.empty:
        return None
    fig = _figure(8.5, 5)
    ax = fig.add_subplot()
    present = [v for v in VARIANTS if v in set(shown["variant"])]
    for variant in present:
        mine = shown[shown["variant"] == variant]
        done, early = mine[mine["status"] == "completed"], mine[mine["status"] == "stopped"]
        ax.scatter(done["x"], done["y"], s=36, color=_color(variant), edgecolor="black", lw=0.4, zorder=3)
        ax.scatter(early["x"], early["y"], s=36, facecolor="white", edgecolor=_color(variant), lw=1.5, zorder=3)
        steps = front[front["variant"] == variant]
        if len(steps):
            ax.step(steps["latent_dim"].astype(float), steps["final_val_loss"].astype(float), where="post",
                    color=_color(variant), lw=1.8, zorder=2)
    xs = list(shown["x"]) + [p[1] for p in seed_points]
    if max(xs) > LOG_X_ABOVE * min(xs):
        ax.set_xscale("log")
        _log_axis(ax.xaxis, integer=True)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for variant, x, y in seed_points:
        ax.scatter([x], [y], marker="x", s=70, color="black", lw=1.8, zorder=4)
        ax.annotate(variant, (x, y), xytext=(6, 0), textcoords="offset points", fontsize=8, color=_color(variant),
                    va="center")
    ax.set_yscale("log")
    _log_axis(ax.yaxis)
    ax.set_xlabel("latent_dim" + (" (log scale)" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel("final val_loss (MSE, log scale)")
    ax.grid(True, which="major", alpha=0.25)
    handles = [Line2D([], [], marker="o", color=_color(v), mec="black", mew=0.4, ms=7, lw=1.8, label=v)
               for v in present]
    handles.append(Line2D([], [], color="0.3", lw=1.8, label="Pareto front\n(completed trials)"))
    if (shown["status"] == "stopped").any():
        handles.append(Line2D([], [], marker="o", mfc="white", mec="0.3", mew=1.5, ls="none", ms=7,
                              label="stopped by ASHA\n(loss at its last epoch)"))
    if len(seed_points):
        handles.append(Line2D([], [], marker="x", color="black", mew=1.8, ms=8, ls="none",
                              label="seed article, Part 3\n(its final training loss)"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=9)
    ax.set_title("Final val_loss against latent_dim: the smallest bottleneck for each loss", fontsize=11)
    return fig


def importance_figure(importances: dict[str, dict[str, float]], evaluator: str) -> Optional[Figure]:
    """Horizontal bars of each variant's hyperparameter importances."""
    variants = [v for v in importances if importances[v]]
    if not variants:
        return None
    fig = _figure(max(3.6 * len(variants) + 0.6, 6), 0.5 * max(len(i) for i in importances.values()) + 1.8)
    axes = fig.subplots(1, len(variants), squeeze=False)[0]
    for ax, variant in zip(axes, variants):
        names = list(importances[variant])[::-1]  # largest on top
        values = [importances[variant][n] for n in names]
        ax.barh(names, values, color=_color(variant))
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.2f}", va="center", fontsize=9)
        ax.set_xlim(0, 1.15)
        ax.set_xlabel("importance (sums to 1)")
        ax.set_title(variant)
    fig.suptitle(f"Hyperparameter importance per variant\n{evaluator} over each variant's complete trials",
                 fontsize=11)
    return fig


def _image_grid(rows: list[tuple[str, torch.Tensor]], title: str, label_width: float = 1.6) -> Figure:
    """Rows of 28x28 images, each row labelled on its left."""
    ncols = max(len(images) for _, images in rows)
    fig = _figure(0.85 * ncols + label_width, 0.9 * len(rows) + 0.5)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    fig.get_layout_engine().set(w_pad=0.01, h_pad=0.01, wspace=0.02, hspace=0.02)
    for r, (label, images) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(images[c].reshape(28, 28).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.set_axis_off()
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title, fontsize=11)
    return fig


def reconstruction_grid(originals: torch.Tensor, reconstructions: list[tuple[str, torch.Tensor]]) -> Figure:
    """Test images (one per digit) on top, each model's reconstruction of them below."""
    return _image_grid([("original", originals), *reconstructions],
                       "Test images and their reconstructions by each variant's best model")


def denoising_grid(clean: torch.Tensor, noisy: dict[float, torch.Tensor], denoised: dict[float, torch.Tensor],
                   labels: dict[float, tuple[str, str]], model_label: str) -> Figure:
    rows = [("clean", clean)]
    for sigma in noisy:
        rows += [(labels[sigma][0], noisy[sigma]), (labels[sigma][1], denoised[sigma])]
    return _image_grid(rows, f"Denoising by the best denoising model ({model_label})\n"
                             "test images + Gaussian noise of std σ, clamped to [0, 1]", label_width=2.0)


def sparsity_histogram(codes: list[tuple[str, torch.Tensor]], threshold: float = NEAR_ZERO) -> Figure:
    """Histogram of |z| (log x) per model, as a fraction of all latent values; the near-zero line marked."""
    fig = _figure(8.5, 4.2)
    ax = fig.add_subplot()
    floor = 1e-6
    magnitudes = [(label, z.abs().flatten().clamp_min(floor).numpy()) for label, z in codes]
    high = max(float(m.max()) for _, m in magnitudes)
    bins = np.logspace(math.log10(floor), math.ceil(math.log10(max(high, 10 * floor))), 61)
    for label, m in magnitudes:
        share = float((m < threshold).mean())
        variant = label.split(" ")[0]
        ax.hist(m, bins=bins, weights=np.full(len(m), 1 / len(m)), histtype="stepfilled", alpha=0.35,
                color=_color(variant))
        ax.hist(m, bins=bins, weights=np.full(len(m), 1 / len(m)), histtype="step", lw=1.6, color=_color(variant),
                label=f"{label}: {share:.1%} of |z| < {threshold:g}")
    ax.axvline(threshold, color="black", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel(f"|z| over all latent units and test images (log scale; values below {floor:g} in the first bin)")
    ax.set_ylabel("fraction of latent values")
    ax.legend(loc="upper left", fontsize=9)
    ax.set_title("Latent code magnitudes: sparse vs vanilla", fontsize=11)
    return fig


def latent_scatter(panels: list[tuple[str, np.ndarray, tuple[str, str]]], labels: np.ndarray) -> Figure:
    """One panel per model: its test-set codes in 2-D (raw when latent_dim is 2, else PCA), coloured by digit."""
    ncols = 2 if len(panels) in (2, 4) else min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = _figure(4.3 * ncols + 1.0, 4.0 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colors = np.array([f"C{d}" for d in range(10)])  # tab10: one colour per digit
    order = np.random.default_rng(0).permutation(len(labels))  # no digit is drawn entirely on top
    for ax, (title, xy, (xlabel, ylabel)) in zip(axes.flat, panels):
        ax.scatter(xy[order, 0], xy[order, 1], c=colors[labels[order] % 10], s=2.5, alpha=0.5, lw=0, rasterized=True)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.remove()
    handles = [Line2D([], [], marker="o", ls="none", color=f"C{d}", ms=6, label=str(d)) for d in range(10)]
    fig.legend(handles=handles, title="digit", loc="outside right center", fontsize=9)
    fig.suptitle(f"Latent codes of the {len(labels):,} test images", fontsize=11)
    return fig


# ---- writing --------------------------------------------------------------------------------------

def _write(path: Path, write: Callable[[str], None]) -> None:
    """Atomically, and readable by all like any report (the temp file starts as 0600)."""
    def write_readable(tmp: str) -> None:
        write(tmp)
        os.chmod(tmp, 0o644)

    write_file(path, write_readable)


def confirm_figure(table: pd.DataFrame, summary: pd.DataFrame) -> Optional[Figure]:
    """`sweep confirm`'s runs: per configuration (in the search's order) each seed's final val_loss as a point,
    the mean with its 95 % interval, and the one value the search saw; the confirmed best's label in bold."""
    if summary is None or summary.empty:
        return None
    fig = _figure(max(7.0, 1.2 * len(summary) + 3), 4.5)
    ax = fig.add_subplot()
    summary = summary.sort_values("rank").reset_index(drop=True)
    for x, row in summary.iterrows():
        runs = table[(table["trial_id"] == row["trial_id"]) & (table["status"] == "completed")]
        losses = runs["final_val_loss"].astype(float)
        offsets = np.linspace(-0.15, 0.15, len(losses)) if len(losses) > 1 else np.zeros(len(losses))
        ax.scatter(x + offsets, losses, s=22, color=_color(row["variant"]), edgecolor="black", lw=0.4, zorder=3)
        if np.isfinite(row["ci_low"]):
            ax.errorbar([x + 0.3], [row["mean_val_loss"]], yerr=[[row["mean_val_loss"] - row["ci_low"]],
                                                                 [row["ci_high"] - row["mean_val_loss"]]],
                        fmt="s", color="black", ms=5, capsize=4, lw=1.3, zorder=4)
        elif np.isfinite(row["mean_val_loss"]):
            ax.scatter([x + 0.3], [row["mean_val_loss"]], marker="s", s=25, color="black", zorder=4)
        ax.scatter([x - 0.3], [row["search_val_loss"]], marker="D", s=30, facecolor="white", edgecolor="crimson",
                   lw=1.5, zorder=4)
    ax.set_xticks(range(len(summary)))
    labels = [f"#{r['rank']} {r['trial_id']}\n{r['variant']}, latent {r['latent_dim']}" for _, r in summary.iterrows()]
    ax.set_xticklabels(labels, fontsize=8)
    for tick, (_, row) in zip(ax.get_xticklabels(), summary.iterrows()):
        if row["confirmed_rank"] == 1 and row["diverged"] == 0:
            tick.set_fontweight("bold")
    ax.set_xlim(-0.6, len(summary) - 0.4)
    ax.set_ylabel("final val_loss (MSE)")
    ax.grid(True, axis="y", alpha=0.25)
    handles = [Line2D([], [], marker="o", color="0.5", mec="black", mew=0.4, ls="none", ms=6, label="one seed"),
               Line2D([], [], marker="s", color="black", ms=5, lw=1.3, label="mean, 95% interval"),
               Line2D([], [], marker="D", mfc="white", mec="crimson", mew=1.5, ls="none", ms=6,
                      label="the search's run")]
    fig.legend(handles=handles, loc="outside right upper", fontsize=9)
    ax.set_title("Confirmed over several seeds (bold: the best mean)",
                 fontsize=11)
    return fig


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)  # render with Agg whatever matplotlib's default backend is
    _write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    fig.clear()  # free the artists now; a bare Figure is in no pyplot registry to close


def write_report(results: Results, *, quiet: bool = False) -> Path:
    """Write every figure and index.html under results/<name>/report/; return the index.html path."""
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    out = results.home / REPORT_DIR
    out.mkdir(exist_ok=True)
    trials, epochs, spec = results.trials, results.epochs, results.spec
    figures: dict[str, str] = {}  # file name -> caption (in the order shown)

    def save(name: str, fig: Optional[Figure], caption: str) -> None:
        if fig is not None:
            _save(fig, out / name)
            figures[name] = caption

    rungs = _asha_rungs(spec.scheduler.grace_period, spec.scheduler.reduction_factor, spec.epochs)
    save("learning_curves.png", learning_curves(trials, epochs, spec.epochs, rungs),
         "Validation loss per epoch of every trial. Hollow squares: the epoch where ASHA stopped a trial; "
         "dotted lines: ASHA's rungs (where it compares trials); black crosses: trials that diverged (NaN/inf loss).")
    save("hyperparameters.png", hyperparameter_scatter(trials, spec.space),
         "Final validation loss against each searched hyperparameter. Filled: trials that ran every epoch; hollow: "
         "trials ASHA stopped early (their loss is from an earlier epoch, so not directly comparable).")

    if results.confirm is not None:
        save("confirm.png", confirm_figure(results.confirm, results.confirmed()),
             "`sweep confirm`: each confirmed configuration's seeds (points, final val_loss after the same epochs), "
             "their mean with its 95% Student-t interval (black), and the single run the search saw (red diamond); "
             "x: the search's rank. A search value below the interval is the winner's curse: a lucky run.")

    seed_points = SEED_ARTICLE_POINTS if trains_like_the_seed_article(spec) else ()
    save("pareto.png", pareto_figure(trials, results.pareto(), seed_points),
         "Final validation loss against latent_dim, one colour per variant. Filled: trials that ran every epoch; "
         "hollow: trials ASHA stopped (their loss is from an earlier epoch). Step lines: each variant's Pareto "
         "front over its completed trials, the trials no other trial of that variant beats on both latent_dim and "
         "loss (Results.pareto())." +
         (" Black crosses: the seed article's Part 3 results for the same training setup; the article reports its "
          "final training loss (MSE+L1 for sparse), not a validation loss." if seed_points else ""))

    study, why_not = load_study(results)
    importances, notes, evaluator = ({}, {}, "") if study is None else param_importances(study, spec.variants())
    save("importance.png", importance_figure(importances, evaluator),
         f"Hyperparameter importance ({evaluator}) per variant, from the study's complete trials of that variant.")

    model_notes = _model_figures(results, out, save, say)

    best = results.best_per_variant()
    flags = edge_flags(best, spec.space)
    page = _html(results, best, flags, figures, importances, notes, evaluator, why_not, model_notes)
    index = out / "index.html"
    _write(index, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    for stale in out.glob("*.png"):  # figures of an earlier report that this sweep no longer has
        if stale.name not in figures:
            stale.unlink()
    return index


def _asha_rungs(grace_period: int, reduction_factor: float, max_t: int) -> list[float]:
    """The epochs at which ASHA compares trials (Ray: grace_period * rf**k below max_t)."""
    rungs, t = [], float(grace_period)
    while t < max_t and reduction_factor > 1:
        rungs.append(t)
        t *= reduction_factor
    return rungs


def _model_figures(results: Results, out: Path, save, say) -> list[str]:
    """Reconstructions, denoising, sparsity and latent figures of the chosen models; returns lines for the page."""
    models = load_models(results, say)
    if not models:
        return ["No completed or stopped trial, so no model to show."]
    data = load_dataset(results.spec.dataset, results.spec.data_dir)
    images = data.test_images.float() / 255
    labels = data.test_labels
    shown = digit_examples(labels)
    lines = [f"{m.role} (trial {m.row['trial_id']}, {m.label}): {m.source}" for m in models]
    outputs = {id(m): reconstruct(m.module, images) for m in models}

    best = [m for m in models if m.role == f"best {m.variant}"]
    save("reconstructions.png",
         reconstruction_grid(images[shown], [(f"{m.variant}\nlatent_dim {int(m.row['latent_dim'])}\nval_loss "
                                              f"{m.row['final_val_loss']:.4f}", outputs[id(m)][0][shown])
                                             for m in best]),
         "One test image of each digit (top) and its reconstruction by the best model of each variant.")

    denoiser = next((m for m in best if m.variant == "denoising"), None)
    if denoiser is not None:
        noisy, denoised, row_labels = {}, {}, {}
        for sigma in NOISE_SIGMAS:
            corrupted = add_noise(images, sigma)
            restored = reconstruct(denoiser.module, corrupted)[0]
            noisy[sigma], denoised[sigma] = corrupted[shown], restored[shown]
            row_labels[sigma] = (f"noisy σ={sigma}\nMSE {torch.mean((corrupted - images) ** 2):.4f}",
                                 f"denoised σ={sigma}\nMSE {torch.mean((restored - images) ** 2):.4f}")
        trained_at = denoiser.row["noise_factor"]
        save("denoising.png",
             denoising_grid(images[shown], noisy, denoised, row_labels,
                            f"{denoiser.label}, trained at noise_factor {trained_at:.3g}"),
             f"The best denoising model on test images with Gaussian noise of std {', '.join(map(str, NOISE_SIGMAS))} "
             f"(seeded, clamped to [0, 1], model in eval mode). MSE against the clean images over all "
             f"{len(images):,} test images.")

    sparse = next((m for m in best if m.variant == "sparse"), None)
    if sparse is not None:
        vanillas = [m for m in models if m.variant == "vanilla"]
        same = [m for m in vanillas if m.row["latent_dim"] == sparse.row["latent_dim"]]
        codes = [(f"sparse (latent_dim {int(sparse.row['latent_dim'])}, sparsity_weight "
                  f"{sparse.row['sparsity_weight']:.2g})", outputs[id(sparse)][1])]
        if same or vanillas:
            vanilla = (same or vanillas)[0]
            codes.append((f"vanilla (latent_dim {int(vanilla.row['latent_dim'])})", outputs[id(vanilla)][1]))
        save("sparsity.png", sparsity_histogram(codes),
             f"|z| of the best sparse model on the test images against the vanilla model's (the best vanilla of the "
             f"same latent_dim when there is one). A unit counts as near zero when |z| < {NEAR_ZERO:g}.")

    panels = []
    for m in models:
        xy, axis_labels = project_2d(outputs[id(m)][1])
        how = "raw 2-D latent" if m.row["latent_dim"] == 2 else f"PCA of the {int(m.row['latent_dim'])}-D latent"
        panels.append((f"{m.role}\n(trial {m.row['trial_id']}): {how}", xy, axis_labels))
    save("latent.png", latent_scatter(panels, labels.numpy()),
         "The test set's latent codes coloured by digit: the codes themselves for latent_dim 2, else their first "
         "two principal components (PCA by SVD of the centred codes), labelled on each panel.")
    return lines


# ---- the page -------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td.text { text-align: left; }
td.edge { background: #fff3cd; font-weight: bold; }
tr.best td { background: #e8f4e8; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #555; max-width: 60em; }
.warn { background: #fff3cd; border-left: 4px solid #e0a800; padding: 0.5em 1em; }
code, pre { background: #f6f6f6; padding: 0.1em 0.3em; }
"""


def _fmt(value) -> str:
    value = _plain(value)
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _describe(param: Param) -> str:
    if param.kind == "choice":
        return f"{param.name} in {{{', '.join(map(str, param.values))}}}"
    return f"{param.name} {param.kind} [{param.low:g}, {param.high:g}]" + (f" step {param.step:g}" if param.step else "")


def _table(rows: pd.DataFrame, columns, best: Optional[str] = None, edges: frozenset = frozenset()) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for _, row in rows.iterrows():
        cells = []
        for c in columns:
            text_cls = "text" if c in ("variant", "trial_id", "status", "error") else ""
            edge = "edge" if (row["trial_id"], c) in edges else ""
            classes = " ".join(x for x in (text_cls, edge) if x)
            mark = " ⚠" if edge else ""
            cells.append(f"<td class=\"{classes}\">{_fmt(row[c])}{mark}</td>" if classes else f"<td>{_fmt(row[c])}</td>")
        cls = " class=\"best\"" if best is not None and row["trial_id"] == best else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _compute_section(results: Results) -> str:
    """What the sweep cost (sweep.telemetry), as the lines `sweep analyze` prints."""
    from .telemetry import describe, summarise

    lines = describe(summarise(results.trials, results.epochs, results.best_trial))
    items = "".join(f"<li>{html.escape(line.strip())}</li>" for line in lines)
    return (f"<h2>Compute</h2><ul>{items}</ul><p>CPU-hours are the trials' training processes' CPU time; "
            "device-hours the time each trial held its device (its GPU share, its CPU cores, or its share of "
            "its packed trainer's time); the README's \"Compute telemetry\" has each figure's meaning.</p>")


def _html(results: Results, best: pd.DataFrame, flags: list[dict], figures: dict[str, str],
          importances: dict, notes: dict, evaluator: str, why_not: str, model_notes: list[str]) -> str:
    import yaml

    spec, trials, home = results.spec, results.trials, results.home
    e = html.escape
    meta = {}
    with contextlib.suppress(OSError, yaml.YAMLError, AttributeError):
        meta = yaml.safe_load((home / "sweep.yaml").read_text()).get("meta") or {}
    counts = ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().sort_index().items()) or "none"
    searched = "; ".join(_describe(p) for p in spec.space.values() if p.kind != "fixed") or "nothing"
    fixed = ", ".join(f"{n}={p.values[0]}" for n, p in spec.space.items() if p.kind == "fixed")
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>sweep {e(spec.name)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>Sweep <code>{e(spec.name)}</code></h1>",
             f"<p>{e(spec.description)}</p>" if spec.description else "",
             "<table>",
             *(f"<tr><th>{e(k)}</th><td class=\"text\">{v}</td></tr>" for k, v in [
                 ("trials", f"{len(trials)} of {spec.num_samples} ({e(counts)})"),
                 ("data", e(f"{spec.dataset}, train_subset={spec.train.get('train_subset')}, "
                            f"{spec.epochs} epochs at most, batch_size={spec.train.get('batch_size')}")),
                 ("searched", e(searched)), ("fixed", e(fixed or "–")),
                 ("ASHA", e(f"grace_period={spec.scheduler.grace_period}, "
                            f"reduction_factor={spec.scheduler.reduction_factor:g}")),
                 ("command", f"<code>{e(str(meta.get('command', '?')))}</code>"),
                 ("commit", f"<code>{e(str(meta.get('commit', '?')))}</code>"),
                 ("created", e(str(meta.get("created", "?")))),
                 ("folder", f"<code>{e(str(home))}</code>")]),
             "</table>"]

    parts.append(_compute_section(results))
    parts.append("<h2>Best trial of each variant</h2>")
    if best.empty:
        parts.append("<p>No trial completed or was stopped with a finite loss, so there is no best trial.</p>")
    else:
        edges = frozenset((f["trial_id"], f["param"]) for f in flags)
        parts.append(_table(best, TABLE_COLUMNS, results.best_trial, edges))
        parts.append("<p>Ranked by final val_loss, trials that ran every epoch before those ASHA stopped. The green "
                     "row is the sweep's best (<code>best_config.yaml</code>).</p>")
    parts.append("<h3>Edge of the search space</h3>")
    if flags:
        items = "".join(f"<li>{e(f['variant'])} (trial {e(f['trial_id'])}): {e(f['text'])}</li>" for f in flags)
        parts.append(f"<div class=\"warn\"><p>A best value on the edge of its range suggests the optimum may lie "
                     f"outside it: widen the space in that direction and sweep again (Google's deep learning tuning "
                     f"playbook).</p><ul>{items}</ul></div>")
    elif not best.empty:
        parts.append(f"<p>No best value lies within {EDGE_FRACTION:.0%} of the end of its searched range.</p>")

    def figure(name: str) -> str:
        if name not in figures:
            return ""
        return f"<figure><img src=\"{e(name)}\" alt=\"{e(name)}\"><figcaption>{e(figures[name])}</figcaption></figure>"

    summary = results.confirmed()
    if summary is not None:
        from .results import confirmed_best

        chosen = confirmed_best(summary)
        parts.append("<h2>Confirmed over several seeds</h2>")
        parts.append(_table(summary.sort_values("rank"), ["rank", "trial_id", "variant", "latent_dim", "lr", "seeds",
                                                         "diverged", "mean_val_loss", "std_val_loss", "ci_low",
                                                         "ci_high", "search_val_loss", "confirmed_rank"],
                            None if chosen is None else chosen["trial_id"]))
        parts.append("<p>The green row has the best mean (<code>best_config.yaml</code> names it); "
                     "<code>confirm.parquet</code> has every run.</p>" if chosen is not None else
                     "<p>No configuration ran every seed without diverging.</p>")
        parts.append(figure("confirm.png"))

    parts += ["<h2>Learning curves</h2>", figure("learning_curves.png"),
              "<h2>Loss against the hyperparameters</h2>",
              figure("hyperparameters.png") or "<p>Nothing is searched: every hyperparameter is fixed.</p>",
              "<h2>Loss against the bottleneck (Pareto front)</h2>",
              figure("pareto.png") or "<p>No completed or stopped trial with a finite loss to show.</p>",
              "<h2>Hyperparameter importance</h2>"]
    if why_not:
        parts.append(f"<p>Not computed: {e(why_not)}.</p>")
    else:
        parts.append(figure("importance.png"))
        parts.append("<ul>" + "".join(f"<li>{e(v)}: {e(n)}</li>" for v, n in notes.items()) + "</ul>")
        why = " (Optuna's default, fANOVA, needs scikit-learn, which is not installed)" \
            if evaluator == "PED-ANOVA" else ""
        parts.append(f"<p>Evaluator: Optuna's {e(evaluator)}{e(why)}, per variant over that variant's COMPLETE trials (the "
                     "space is conditional, and stopped trials are PRUNED in the study). With few trials the "
                     "numbers are rough.</p>")

    parts.append("<h2>The best models</h2>")
    parts.append("<ul>" + "".join(f"<li>{e(line)}</li>" for line in model_notes) + "</ul>")
    for name in ("reconstructions.png", "denoising.png", "sparsity.png", "latent.png"):
        parts.append(figure(name))

    errored = trials[trials["status"] == "error"]
    if not errored.empty:
        parts.append("<h2>Errored trials</h2>")
        parts.append(_table(errored, ("trial_id", "variant", "epochs", "num_failures", "error")))

    parts.append("<h2>Every trial</h2><details><summary>show the table</summary>")
    order = trials.assign(_l=pd.to_numeric(trials["final_val_loss"], errors="coerce")).sort_values(
        ["variant", "_l"], na_position="last")
    parts.append(_table(order, TABLE_COLUMNS) + "</details>")

    parts.append("<h2>Explore further</h2><ul>"
                 f"<li>The Optuna study in optuna-dashboard (optional: <code>pip install 'aesweep[dashboard]'</code>):"
                 f"<pre>optuna-dashboard {e(study_url(study_path(home)))}</pre></li>"
                 f"<li>Every trial's metrics in TensorBoard (if installed):"
                 f"<pre>tensorboard --logdir {e(str(home / EXPERIMENT_DIR if results.spec.all_drivers == 1 else home))}"
                 "</pre></li>"
                 f"<li>The tables: <code>trials.parquet</code>, <code>trials.csv</code>, <code>epochs.parquet</code> "
                 f"and <code>best_config.yaml</code> in <code>{e(str(home))}</code>; "
                 f"<code>sweep retrain {e(str(home))}</code> trains the best config again.</li></ul>")
    parts.append("</body></html>\n")
    return "\n".join(p for p in parts if p)
