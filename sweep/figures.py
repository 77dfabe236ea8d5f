"""The report's figures: each function takes its data (tables, tensors, arrays) and returns a matplotlib Figure.

Nothing here loads a model, opens a study or writes a file; sweep.report gathers the data and saves the figures.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import LogFormatterSciNotation, LogLocator, MaxNLocator, NullFormatter

from aemodels.registry import REGISTRY, VARIANTS
from aemodels.status import RANKED, Status

from .spec import CONDITIONAL, Param

if TYPE_CHECKING:
    import torch

DPI = 110
NEAR_ZERO = 1e-2  # |z| below this counts as an inactive latent unit
END_LABELS_UP_TO = 8  # learning curves of this many trials or fewer are labelled with their latent_dim
LOG_X_ABOVE = 8  # latent dims spanning more than this factor are drawn on a log axis


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


def variant_color(variant: str) -> str:
    """The variant's colour in every figure (its registry entry's), grey for a variant no longer registered."""
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
        ax.plot(finite["epoch"], finite["val_loss"], color=variant_color(variant[trial_id]), alpha=alpha, lw=1.2,
                marker="." if len(finite) == 1 else None)
        if label_ends and shared[variant[trial_id]] and len(finite):  # one colour, several curves: which is which
            ax.annotate(f" latent {int(latent[trial_id])}", (finite["epoch"].iloc[-1], finite["val_loss"].iloc[-1]),
                        fontsize=8, color=variant_color(variant[trial_id]), va="center")
        if status[trial_id] == Status.STOPPED and len(finite):
            stopped.append((finite["epoch"].iloc[-1], finite["val_loss"].iloc[-1], variant[trial_id]))
        elif status[trial_id] == Status.DIVERGED:
            if len(finite):
                diverged.append((finite["epoch"].iloc[-1], finite["val_loss"].iloc[-1]))
            else:
                diverged_at_start.append(rows["epoch"].iloc[-1])
    for x, y, v in stopped:
        ax.plot(x, y, marker="s", ms=6, mfc="white", mec=variant_color(v), mew=1.6, ls="none", zorder=3)
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
    handles = [Line2D([], [], color=variant_color(v), lw=2, label=v) for v in present]
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
            done = ok[ok["status"] == Status.COMPLETED]
            early = ok[ok["status"] != Status.COMPLETED]
            ax.scatter(done["x"], done["y"], s=36, color=variant_color(variant), edgecolor="black", lw=0.4, zorder=3)
            ax.scatter(early["x"], early["y"], s=36, facecolor="white", edgecolor=variant_color(variant), lw=1.5,
                       zorder=3)
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
    handles = [Line2D([], [], marker="o", color=variant_color(v), mec="black", mew=0.4, ls="none", ms=7, label=v)
               for v in present]
    if (trials["status"].isin([Status.STOPPED, Status.RUNNING]) & np.isfinite(loss)).any():
        handles.append(Line2D([], [], marker="o", mfc="white", mec="0.3", mew=1.5, ls="none", ms=7,
                              label="stopped early\n(loss at its last epoch)"))
    if (~np.isfinite(loss)).any():
        handles.append(Line2D([], [], marker="X", color="black", ls="none", ms=8, label="diverged / errored\n(no loss)"))
    if any(space[n].kind not in ("choice", "fixed") for n in names):
        handles.append(Patch(color="0.88", label="searched range"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=9)
    fig.suptitle("Final val_loss per searched hyperparameter", fontsize=11, x=0.01, ha="left")
    return fig




def pareto_figure(trials: pd.DataFrame, front: pd.DataFrame, seed_points=()) -> Optional[Figure]:
    """Final val_loss against latent_dim per variant, each variant's Pareto front (Results.pareto()) as a step
    line; stopped trials hollow; `seed_points` ((variant, latent_dim, loss), ...) as black crosses."""
    loss = pd.to_numeric(trials["final_val_loss"], errors="coerce").astype(float)
    latent = pd.to_numeric(trials["latent_dim"], errors="coerce").astype(float)
    shown = pd.DataFrame({"variant": trials["variant"], "status": trials["status"], "x": latent, "y": loss})
    shown = shown[shown["status"].isin(RANKED) & np.isfinite(shown["y"]) & shown["x"].notna()]
    if shown.empty:
        return None
    fig = _figure(8.5, 5)
    ax = fig.add_subplot()
    present = [v for v in VARIANTS if v in set(shown["variant"])]
    for variant in present:
        mine = shown[shown["variant"] == variant]
        done, early = mine[mine["status"] == Status.COMPLETED], mine[mine["status"] == Status.STOPPED]
        ax.scatter(done["x"], done["y"], s=36, color=variant_color(variant), edgecolor="black", lw=0.4, zorder=3)
        ax.scatter(early["x"], early["y"], s=36, facecolor="white", edgecolor=variant_color(variant), lw=1.5, zorder=3)
        steps = front[front["variant"] == variant]
        if len(steps):
            ax.step(steps["latent_dim"].astype(float), steps["final_val_loss"].astype(float), where="post",
                    color=variant_color(variant), lw=1.8, zorder=2)
    xs = list(shown["x"]) + [p[1] for p in seed_points]
    if max(xs) > LOG_X_ABOVE * min(xs):
        ax.set_xscale("log")
        _log_axis(ax.xaxis, integer=True)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for variant, x, y in seed_points:
        ax.scatter([x], [y], marker="x", s=70, color="black", lw=1.8, zorder=4)
        ax.annotate(variant, (x, y), xytext=(6, 0), textcoords="offset points", fontsize=8,
                    color=variant_color(variant), va="center")
    ax.set_yscale("log")
    _log_axis(ax.yaxis)
    ax.set_xlabel("latent_dim" + (" (log scale)" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel("final val_loss (MSE, log scale)")
    ax.grid(True, which="major", alpha=0.25)
    handles = [Line2D([], [], marker="o", color=variant_color(v), mec="black", mew=0.4, ms=7, lw=1.8, label=v)
               for v in present]
    handles.append(Line2D([], [], color="0.3", lw=1.8, label="Pareto front\n(completed trials)"))
    if (shown["status"] == Status.STOPPED).any():
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
        ax.barh(names, values, color=variant_color(variant))
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
                color=variant_color(variant))
        ax.hist(m, bins=bins, weights=np.full(len(m), 1 / len(m)), histtype="step", lw=1.6,
                color=variant_color(variant), label=f"{label}: {share:.1%} of |z| < {threshold:g}")
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



def confirm_figure(table: pd.DataFrame, summary: pd.DataFrame) -> Optional[Figure]:
    """`sweep confirm`'s runs: per configuration (in the search's order) each seed's final val_loss as a point,
    the mean with its 95 % interval, and the one value the search saw; the confirmed best's label in bold."""
    if summary is None or summary.empty:
        return None
    fig = _figure(max(7.0, 1.2 * len(summary) + 3), 4.5)
    ax = fig.add_subplot()
    summary = summary.sort_values("rank").reset_index(drop=True)
    for x, row in summary.iterrows():
        runs = table[(table["trial_id"] == row["trial_id"]) & (table["status"] == Status.COMPLETED)]
        losses = runs["final_val_loss"].astype(float)
        offsets = np.linspace(-0.15, 0.15, len(losses)) if len(losses) > 1 else np.zeros(len(losses))
        ax.scatter(x + offsets, losses, s=22, color=variant_color(row["variant"]), edgecolor="black", lw=0.4, zorder=3)
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

