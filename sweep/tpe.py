"""A Tree-structured Parzen Estimator over the sweep's space, in NumPy, fed one finished trial at a time.

It owns the density model and the sampling only: sweep.searcher decides what it is told and keeps the
Optuna study, the record of every trial. The model is a bounded part of the history (the best trials
and a recent window), so a suggestion costs the same at 10,000 trials as at 600 (BENCHMARKS.md,
"Searcher at scale").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .spec import CONDITIONAL, SEARCHED, Param

N_BEST = 100  # the best trials (highest epoch reached, then value) always in the model: they hold the good group
N_RECENT = 500  # plus the latest finished trials: where the search is now
N_CANDIDATES = 24  # draws from the good density per suggestion, as Optuna's TPE (n_ei_candidates)
PRIOR_WEIGHT = 1.0


@dataclass(frozen=True)
class Dim:
    """One sampled parameter: a categorical index, or a number in its (log-)transformed range."""

    name: str
    choices: tuple = ()  # categorical when non-empty
    low: float = 0.0  # transformed bounds; an int's widened by half a step so its ends are drawn as often
    high: float = 1.0
    log: bool = False
    step: float | None = None
    integer: bool = False
    needs: int | None = None  # active only when the variant dimension holds this choice index

    @property
    def categorical(self) -> bool:
        return bool(self.choices)


def dims_of(params: dict[str, Param]) -> tuple[list[Dim], dict]:
    """The sampled dimensions in SEARCHED order (variant first) and the fixed values."""
    fixed = {n: p.values[0] for n, p in params.items() if p.kind == "fixed"}
    variant = params.get("variant")
    dims = []
    for name in SEARCHED:
        param = params.get(name)
        if param is None or param.kind == "fixed":
            continue
        needs = None
        if name in CONDITIONAL:
            if variant.kind == "fixed":
                if variant.values[0] != CONDITIONAL[name]:
                    continue
            elif CONDITIONAL[name] in variant.values:
                needs = variant.values.index(CONDITIONAL[name])
            else:
                continue
        if param.kind == "choice":
            dims.append(Dim(name, choices=tuple(param.values), needs=needs))
            continue
        integer = param.kind in ("int", "logint")
        step = param.step or (1 if integer else None)
        half = 0.5 * step if step else 0.0
        low, high = param.low - half, param.high + half
        if param.log:
            low, high = math.log(max(low, 0.5) if integer else low), math.log(high)
        dims.append(Dim(name, low=low, high=high, log=param.log, step=step, integer=integer, needs=needs))
    return dims, fixed


def _ndtr(x: np.ndarray) -> np.ndarray:
    """The standard normal CDF (Abramowitz & Stegun 7.1.26, error < 1.5e-7): NumPy has no erf, SciPy is not a dependency."""
    z = np.abs(x) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1.0 - poly * np.exp(-z * z)
    return 0.5 * (1.0 + np.sign(x) * erf)


def default_weights(n: int) -> np.ndarray:
    """Optuna's TPE weights by age: the newest 25 weigh 1, older ones ramp down to 1/n."""
    if n < 25:
        return np.ones(n)
    return np.concatenate([np.linspace(1.0 / n, 1.0, num=n - 25), np.ones(25)])


def n_good(n: int) -> int:
    """Optuna's default gamma: the best 10% form the good group, at most 25."""
    return min(int(math.ceil(0.1 * n)), 25)


class TPE:
    """The history (one row per finished trial, appended) and the sampler over it.

    Ranking follows Optuna's TPE with pruned trials: the further a trial got, the better, then the
    lower its value at that epoch. Running trials are told as the worst (constant liar), so concurrent
    suggestions spread out instead of piling onto one point.
    """

    def __init__(self, params: dict[str, Param], seed: int, n_startup_trials: int, constant_liar: bool = True):
        self.dims, self.fixed = dims_of(params)
        self.n_startup_trials = n_startup_trials
        self.constant_liar = constant_liar
        self.rng = np.random.default_rng(seed)
        self._x = np.full((256, len(self.dims)), np.nan)
        self._key = np.zeros((256, 2))  # (-epochs reached, value there): smaller is better
        self.n = 0
        self._best: list[tuple[float, float, int]] = []  # the N_BEST smallest keys, sorted

    # ---- history ---------------------------------------------------------------------------------

    def encode(self, params: dict) -> np.ndarray:
        row = np.full(len(self.dims), np.nan)
        for j, dim in enumerate(self.dims):
            value = params.get(dim.name)
            if value is None:
                continue
            if dim.categorical:
                row[j] = dim.choices.index(value)
            else:
                row[j] = math.log(value) if dim.log else float(value)
        return row

    def decode(self, row: np.ndarray) -> dict:
        params = {}
        for j, dim in enumerate(self.dims):
            value = row[j]
            if np.isnan(value):
                continue
            if dim.categorical:
                params[dim.name] = dim.choices[int(value)]
                continue
            value = math.exp(value) if dim.log else float(value)
            lo, hi = (math.exp(dim.low), math.exp(dim.high)) if dim.log else (dim.low, dim.high)
            if dim.step:  # back onto the grid, inside the declared range
                lo, hi = lo + 0.5 * dim.step, hi - 0.5 * dim.step
                value = lo + round((value - lo) / dim.step) * dim.step
            value = min(max(value, lo), hi)
            params[dim.name] = int(round(value)) if dim.integer else float(value)
        return params

    def add(self, params: dict, epochs: int, value: float | None) -> None:
        """A finished trial (COMPLETE or PRUNED): its parameters, the last epoch it reported and its value there."""
        if self.n == len(self._x):
            self._x = np.concatenate([self._x, np.full_like(self._x, np.nan)])
            self._key = np.concatenate([self._key, np.zeros_like(self._key)])
        value = float(value) if value is not None and math.isfinite(value) else math.inf
        key = (-float(epochs), value, self.n)
        self._x[self.n] = self.encode(params)
        self._key[self.n] = key[:2]
        self.n += 1
        if len(self._best) < N_BEST or key < self._best[-1]:
            self._best.append(key)
            self._best.sort()
            del self._best[N_BEST:]

    # ---- sampling --------------------------------------------------------------------------------

    def suggest(self, running: np.ndarray | None = None) -> dict:
        """One configuration: random until n_startup_trials have finished, then TPE.

        `running`: the encoded rows (`encode`) of the trials running now, kept by the caller so they are
        not encoded again on every suggestion."""
        if self.n < max(self.n_startup_trials, 1) or not self.dims:
            return self.random()
        recent = np.arange(max(0, self.n - N_RECENT), self.n)
        model = np.union1d(np.fromiter((b[2] for b in self._best), int, len(self._best)), recent)
        order = model[np.lexsort((model, self._key[model, 1], self._key[model, 0]))]  # best first
        liars = running if self.constant_liar and running is not None and len(running) else None
        good = n_good(self.n)  # of the finished trials, as Optuna counts (optuna#4073)
        below = np.sort(order[:good])  # by age, as Optuna weighs them
        above = np.sort(order[good:])
        x_above = self._x[above]
        if liars is not None:
            x_above = np.vstack([x_above, liars])
        x_below = self._x[below]
        row = np.full(len(self.dims), np.nan)
        shared = [j for j, dim in enumerate(self.dims) if dim.needs is None]
        row[shared] = self._pick(shared, x_below, x_above)
        for j, dim in enumerate(self.dims):
            if dim.needs is not None and row[0] == dim.needs:
                row[j] = self._pick([j], x_below, x_above)[0]
        return self.decode(row)

    def _pick(self, cols: list[int], x_below: np.ndarray, x_above: np.ndarray) -> np.ndarray:
        """The best of N_CANDIDATES draws from the good density over `cols`, by good/bad density ratio.

        The parameters every trial has are one group, each conditional parameter its own, fitted to the
        trials that have it (Optuna's group=True): scored together, a variant with an extra parameter
        would win the argmax more often just by having one more noisy term in its ratio.
        """
        dims = [self.dims[j] for j in cols]
        x_below, x_above = x_below[:, cols], x_above[:, cols]
        lower = _Parzen(dims, x_below[~np.isnan(x_below).any(axis=1)])
        upper = _Parzen(dims, x_above[~np.isnan(x_above).any(axis=1)])
        candidates = lower.sample(self.rng, N_CANDIDATES)
        score = lower.log_pdf(candidates) - upper.log_pdf(candidates)
        return candidates[int(np.argmax(score))]

    def random(self) -> dict:
        row = np.array([self.rng.integers(len(d.choices)) if d.categorical else self.rng.uniform(d.low, d.high)
                        for d in self.dims], dtype=float)
        self._deactivate(row[None, :])
        return self.decode(row)

    def _deactivate(self, rows: np.ndarray) -> None:
        """Blank the conditional parameters a row's variant does not use."""
        for j, dim in enumerate(self.dims):
            if dim.needs is not None:
                rows[rows[:, 0] != dim.needs, j] = np.nan


def _neighbour_gaps(mus: np.ndarray, low: float, high: float) -> np.ndarray:
    """Each kernel's bandwidth as Optuna's TPE sets it: the larger gap to its neighbours (the range's ends
    count as neighbours, except for the outermost kernels), clipped to [range / min(100, kernels + 1), range]."""
    if len(mus) == 0:
        return mus
    order = np.argsort(mus)
    ends = np.concatenate([[low], mus[order], [high]])
    gaps = np.maximum(ends[1:-1] - ends[:-2], ends[2:] - ends[1:-1])
    if len(ends) >= 4:
        gaps[0], gaps[-1] = ends[2] - ends[1], ends[-2] - ends[-3]
    sigmas = np.empty_like(gaps)
    sigmas[order] = gaps
    width = high - low
    return np.clip(sigmas, width / min(100.0, len(mus) + 2.0), width)


class _Parzen:
    """A mixture of one kernel per observation plus a broad prior kernel (Optuna's multivariate TPE)."""

    def __init__(self, dims: list[Dim], x: np.ndarray):
        self.dims = dims
        n = len(x)
        self.x = x
        weights = np.append(default_weights(n), PRIOR_WEIGHT) if n else np.ones(1)
        self.log_w = np.log(weights / weights.sum())
        self.k = n + 1
        self.mu, self.sigma, self.log_z, self.cat = [], [], [], []
        for j, dim in enumerate(self.dims):
            column = x[:, j]
            if dim.categorical:
                c = len(dim.choices)
                table = np.full((self.k, c), PRIOR_WEIGHT / self.k)
                seen = ~np.isnan(column)
                table[np.flatnonzero(seen), column[seen].astype(int)] += 1
                table[~np.append(seen, False)] = 1.0  # a kernel without the value, and the prior: uniform
                self.cat.append(np.log(table / table.sum(axis=1, keepdims=True)))
                self.mu.append(None), self.sigma.append(None), self.log_z.append(None)
                continue
            width = dim.high - dim.low
            mu = np.append(column, 0.5 * (dim.low + dim.high))
            sigmas = np.append(_neighbour_gaps(column, dim.low, dim.high), width)  # the prior: as wide as the range
            log_z = np.log(_ndtr((dim.high - mu) / sigmas) - _ndtr((dim.low - mu) / sigmas))
            self.mu.append(mu), self.sigma.append(sigmas), self.log_z.append(log_z), self.cat.append(None)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        pick = rng.choice(self.k, size=size, p=np.exp(self.log_w))
        out = np.empty((size, len(self.dims)))
        for j, dim in enumerate(self.dims):
            if dim.categorical:
                probs = np.exp(self.cat[j][pick])
                out[:, j] = (probs.cumsum(axis=1) < rng.random((size, 1))).sum(axis=1)
                out[:, j] = np.minimum(out[:, j], len(dim.choices) - 1)
                continue
            mu, sigma = self.mu[j][pick], self.sigma[j][pick]
            draw = rng.normal(mu, sigma)
            outside = (draw < dim.low) | (draw > dim.high)
            for _ in range(100):  # a kernel's centre lies inside the range: at least ~half of its draws do
                if not outside.any():
                    break
                draw[outside] = rng.normal(mu[outside], sigma[outside])
                outside = (draw < dim.low) | (draw > dim.high)
            out[:, j] = np.clip(draw, dim.low, dim.high)
        return out

    def log_pdf(self, rows: np.ndarray) -> np.ndarray:
        """log density of each row (rows × dimensions, NaN where a parameter is unused)."""
        total = np.tile(self.log_w, (len(rows), 1))  # rows × kernels
        for j, dim in enumerate(self.dims):
            value = rows[:, j]
            used = ~np.isnan(value)
            if not used.any():
                continue
            if dim.categorical:
                part = self.cat[j][:, np.where(used, value, 0).astype(int)].T
            else:
                z = (np.where(used, value, 0)[:, None] - self.mu[j][None, :]) / self.sigma[j][None, :]
                part = -0.5 * z * z - np.log(self.sigma[j] * math.sqrt(2 * math.pi))[None, :] - self.log_z[j][None, :]
            total += np.where(used[:, None], part, 0.0)
        peak = total.max(axis=1, keepdims=True)
        return peak[:, 0] + np.log(np.exp(total - peak).sum(axis=1))
