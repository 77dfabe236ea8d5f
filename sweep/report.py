"""A finished sweep -> results/<name>/report/: PNG figures and an index.html that needs nothing but them.

Gathers what the page shows (the tables, the Optuna study, the chosen trials' models), draws it with sweep.figures,
renders the page from templates/report.html.j2 and writes every file atomically under report/. It trains nothing
unless a chosen trial has no readable checkpoint; then it retrains that config once and says so, on the console
and on the page.
"""
from __future__ import annotations

import contextlib
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import jinja2
import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from aemodels import TrainState, load_dataset, train
from aemodels.registry import VARIANTS
from aemodels.status import Status

from .experiment import EXPERIMENT_DIR, checkpoints, trial_folders
from .figures import (DPI, NEAR_ZERO, confirm_figure, denoising_grid, hyperparameter_scatter, importance_figure,
                      latent_scatter, learning_curves, pareto_figure, reconstruction_grid, sparsity_histogram)
from .results import Results, confirmed_best, ranked_trials, write_file
from .study import open_storage, storage_error, study_path, study_url
from .spec import SEARCHED, Param

REPORT_DIR = "report"
TEMPLATE = "report.html.j2"
NOISE_SIGMAS = (0.3, 0.5, 0.7)  # the denoising figure's test noise levels (std of the added Gaussian)
NOISE_SEED = 0
EDGE_FRACTION = 0.05  # a best value within 5% of a range's end (log-scaled for log ranges) is on the edge
MIN_IMPORTANCE_TRIALS = 5  # complete trials of one variant needed before its importances mean anything
LOSS_COLUMNS = ("final_train_loss", "final_val_loss", "best_val_loss")
# The seed article's Part 3 table ("Deconstructing Autoencoders from Scratch, Part 3: What the Bottleneck
# Learns", https://soveshmohapatra.com/projects/autoencoders-benchmark/): (variant, latent_dim, final loss) after
# 30 epochs on 5,000 MNIST images, batch 128, Adam lr 1e-3. Its "final loss" is the training objective (the
# sparse row says MSE+L1), not a validation loss, so it is a reference point, not the same measurement.
SEED_ARTICLE_POINTS = (("vanilla", 2, 0.0401), ("vanilla", 32, 0.0125), ("denoising", 32, 0.0191),
                       ("sparse", 32, 0.0130), ("conv", 32, 0.0083))
SEED_ARTICLE_TRAINING = {"epochs": 30, "train_subset": 5000, "batch_size": 128}
TABLE_COLUMNS = ("variant", "trial_id", "status", "epochs", *SEARCHED[1:], *LOSS_COLUMNS)




# ---- the trained models the figures look at --------------------------------------------------------

@dataclass
class Model:
    """A trained model of one trial, with where it came from (a checkpoint, or retraining)."""

    role: str  # "best vanilla", "best vanilla with latent_dim 2", ...
    row: pd.Series  # the trial's row of the trials table
    module: torch.nn.Module  # in eval mode, on the CPU
    source: str
    retrained: str = ""  # why it was trained again for the report (its checkpoint missing or wrong); "" if loaded

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
    for checkpoint in checkpoints(*trial_folders(home, trial_id)):
        # torch.load raises anything from OSError to UnpicklingError or RuntimeError for a cut-short file
        with contextlib.suppress(Exception):
            return TrainState.load(checkpoint / "state.pt"), checkpoint.name
    return None, "no readable checkpoint"


def load_models(results: Results, say: Callable[[str], None] = print) -> list[Model]:
    """The chosen trials' models from their checkpoints; a trial without a usable one is retrained from its
    config, and `say` is told which trial and why before it trains."""
    models = []
    for _, row in chosen_trials(results.trials).iterrows():
        state, where = checkpoint_state(results.home, row["trial_id"])
        if state is not None and state.config.variant != row["variant"]:
            state, where = None, f"{where} holds a {state.config.variant} model"
        if state is not None:
            models.append(Model(row["role"], row.drop("role"), state.to_module().cpu().eval(),
                                f"loaded from {where} (epoch {state.epoch})"))
            continue
        config = results.spec.train_config({k: _plain(row[k]) for k in SEARCHED})
        say(f"report: retraining trial {row['trial_id']} ({row['role']}) for the model figures: {where}; "
            f"its config trains again ({config.variant}, {config.epochs} epochs)")
        trained = train(config)
        source = f"retrained ({where}): {trained.status} after {len(trained.history)} epochs, " \
                 f"val_loss {trained.val_loss:.4g}"
        models.append(Model(row["role"], row.drop("role"), trained.model.cpu().eval(), source, retrained=where))
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



def trains_like_the_seed_article(spec) -> bool:
    """Whether the sweep's trials train as the seed article's Part 3 did (configs/seed.yaml under any name):
    real MNIST training on the same images, epochs and batch size, so the article's losses are comparable."""
    return (spec.simulate is None and spec.dataset == "mnist"
            and all(spec.train.get(k) == v for k, v in SEED_ARTICLE_TRAINING.items()))




# ---- writing --------------------------------------------------------------------------------------

def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)  # render with Agg whatever matplotlib's default backend is
    write_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    fig.clear()  # free the artists now; a bare Figure is in no pyplot registry to close


def write_report(results: Results, *, quiet: bool = False) -> Path:
    """Write every figure and index.html under results/<name>/report/; return the index.html path."""
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    # Retraining takes minutes and shows a model other than the one the sweep trained: said even when quiet.
    announce = (lambda line: print(line, file=sys.stderr, flush=True)) if quiet else say
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

    model_lines, retrained = _model_figures(results, out, save, announce)

    best = results.best_per_variant()
    flags = edge_flags(best, spec.space)
    page = render_page(_page_context(results, best, flags, figures, importances, notes, evaluator, why_not,
                                     model_lines, retrained))
    index = out / "index.html"
    write_file(index, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
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


def _model_figures(results: Results, out: Path, save, say) -> tuple[list[str], list[str]]:
    """Reconstructions, denoising, sparsity and latent figures of the chosen models; returns the page's line on
    each model and its notes on those retrained."""
    models = load_models(results, say)
    if not models:
        return ["No completed or stopped trial, so no model to show."], []
    data = load_dataset(results.spec.dataset, results.spec.data_dir)
    images = data.test_images.float() / 255
    labels = data.test_labels
    shown = digit_examples(labels)
    lines = [f"{m.role} (trial {m.row['trial_id']}, {m.label}): {m.source}" for m in models]
    retrained = [f"{m.role} (trial {m.row['trial_id']}): {m.retrained}" for m in models if m.retrained]
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
    return lines, retrained


# ---- the page -------------------------------------------------------------------------------------

def _fmt(value) -> str:
    """A table cell's text; the template escapes it."""
    value = _plain(value)
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _describe(param: Param) -> str:
    if param.kind == "choice":
        return f"{param.name} in {{{', '.join(map(str, param.values))}}}"
    return f"{param.name} {param.kind} [{param.low:g}, {param.high:g}]" + (f" step {param.step:g}" if param.step else "")


def _table(rows: pd.DataFrame, columns, best: Optional[str] = None, edges: frozenset = frozenset()) -> dict:
    """A table as the template's `table` macro draws it: the best trial's row green, edge values flagged."""
    body = []
    for _, row in rows.iterrows():
        cells = []
        for c in columns:
            edge = (row["trial_id"], c) in edges
            classes = " ".join(x for x, on in (("text", c in ("variant", "trial_id", "status", "error")),
                                               ("edge", edge)) if on)
            cells.append({"text": _fmt(row[c]) + (" ⚠" if edge else ""), "class": classes})
        body.append({"best": best is not None and row["trial_id"] == best, "cells": cells})
    return {"columns": list(columns), "rows": body}


def _page_context(results: Results, best: pd.DataFrame, flags: list[dict], figures: dict[str, str],
                  importances: dict, notes: dict, evaluator: str, why_not: str, model_lines: list[str],
                  retrained: list[str]) -> dict:
    """Everything index.html shows, as plain values: the template decides only how it looks."""
    import yaml

    from .telemetry import describe, summarise

    spec, trials, home = results.spec, results.trials, results.home
    meta = {}
    with contextlib.suppress(OSError, yaml.YAMLError, AttributeError):
        meta = yaml.safe_load((home / "sweep.yaml").read_text()).get("meta") or {}
    counts = ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().sort_index().items()) or "none"
    fixed = ", ".join(f"{n}={p.values[0]}" for n, p in spec.space.items() if p.kind == "fixed")
    summary = [
        ("trials", f"{len(trials)} of {spec.num_samples} ({counts})", False),
        ("data", f"{spec.dataset}, train_subset={spec.train.get('train_subset')}, {spec.epochs} epochs at most, "
                 f"batch_size={spec.train.get('batch_size')}", False),
        ("searched", "; ".join(_describe(p) for p in spec.space.values() if p.kind != "fixed") or "nothing", False),
        ("fixed", fixed or "–", False),
        ("ASHA", f"grace_period={spec.scheduler.grace_period}, "
                 f"reduction_factor={spec.scheduler.reduction_factor:g}", False),
        ("command", str(meta.get("command", "?")), True),
        ("commit", str(meta.get("commit", "?")), True),
        ("created", str(meta.get("created", "?")), False),
        ("folder", str(home), True)]

    confirm = None
    confirmed = results.confirmed()
    if confirmed is not None:
        chosen = confirmed_best(confirmed)
        confirm = {"table": _table(confirmed.sort_values("rank"),
                                   ["rank", "trial_id", "variant", "latent_dim", "lr", "seeds", "diverged",
                                    "mean_val_loss", "std_val_loss", "ci_low", "ci_high", "search_val_loss",
                                    "confirmed_rank"], None if chosen is None else chosen["trial_id"]),
                   "chosen": chosen is not None}

    errored = trials[trials["status"] == Status.ERROR]
    every = trials.assign(_l=pd.to_numeric(trials["final_val_loss"], errors="coerce")).sort_values(
        ["variant", "_l"], na_position="last")
    return {
        "name": spec.name, "description": spec.description, "summary": summary,
        "compute": [line.strip() for line in describe(summarise(trials, results.epochs, results.best_trial))],
        "best": None if best.empty else _table(best, TABLE_COLUMNS, results.best_trial,
                                               frozenset((f["trial_id"], f["param"]) for f in flags)),
        "flags": flags, "edge_fraction": f"{EDGE_FRACTION:.0%}", "confirm": confirm, "figures": figures,
        "why_not": why_not, "importance_notes": notes, "evaluator": evaluator,
        "no_sklearn": evaluator == "PED-ANOVA",
        "model_notes": model_lines, "retrained": retrained,
        "errored": None if errored.empty else _table(errored, ("trial_id", "variant", "epochs", "num_failures",
                                                               "error")),
        "every": _table(every, TABLE_COLUMNS),
        "study_url": study_url(study_path(home)),
        "logdir": str(home / EXPERIMENT_DIR if spec.all_drivers == 1 else home), "home": str(home),
    }


def render_page(context: dict) -> str:
    """index.html from templates/report.html.j2; every value is escaped on the way in (autoescape)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    return env.get_template(TEMPLATE).render(context)
