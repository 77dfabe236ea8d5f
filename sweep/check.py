"""`sweep check`: what a sweep would do, found without running it: the resolved spec, the resource
plan on the cluster it would use, and ASHA's expected trial-epochs.

Starts no trial and writes nothing (a tracking server is asked, not written to); Ray is joined (as a
driver only) when an address names a cluster, and not started at all otherwise.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

import yaml

from .plan import CPU_TRAINER_THREADS, Plan, plan
from .spec import SweepSpec


@dataclass(frozen=True)
class Estimate:
    """ASHA's expected cost of a sweep, in trial-epochs, if a fraction 1/reduction_factor of the trials
    at each rung goes on to the next (ASHA promotes more while its rungs are still filling)."""

    num_samples: int
    max_t: int
    grace_period: int
    reduction_factor: float
    rungs: tuple[tuple[int, ...], ...]  # per bracket, the epochs at which ASHA judges a trial
    weights: tuple[float, ...]  # per bracket, the chance that a trial is placed in it
    epochs_per_trial: float

    @property
    def trial_epochs(self) -> float:
        return self.num_samples * self.epochs_per_trial


def bracket_rungs(grace_period: int, reduction_factor: float, max_t: int, brackets: int = 1) -> tuple[tuple[int, ...], ...]:
    """The rungs of each of ASHA's brackets, ascending, as ray.tune.schedulers.AsyncHyperBandScheduler
    makes them: bracket s judges at grace * rf**(k + s); a fractional rung is decided at the next whole
    epoch, the first result at or past it (spec.rung_epochs takes the union of these)."""
    out = []
    for s in range(brackets):
        count = int(math.log(max_t / grace_period) / math.log(reduction_factor) - s + 1)
        out.append(tuple(sorted({min(max_t, math.ceil(grace_period * reduction_factor ** (k + s)))
                                 for k in range(max(0, count))})))
    return tuple(out)


def bracket_weights(rungs: tuple[tuple[int, ...], ...]) -> tuple[float, ...]:
    """The chance of each bracket, as Ray's ASHA draws one per trial: proportional to e**(number of rungs)."""
    most = max(len(r) for r in rungs)
    raw = [math.exp(len(r) - most) for r in rungs]
    return tuple(w / sum(raw) for w in raw)


def expected_epochs(rungs: tuple[int, ...], reduction_factor: float, max_t: int) -> float:
    """Expected epochs of one trial in a bracket with these rungs: every trial trains to the first rung,
    a fraction 1/rf**i of them past the i-th rung to the next, and 1/rf**n past the last to max_t."""
    epochs, reached, share = 0.0, 0, 1.0
    for rung in (*rungs, max_t):
        epochs += share * (rung - reached)
        reached = rung
        share /= reduction_factor
    return epochs


def asha_estimate(spec: SweepSpec) -> Estimate:
    sched = spec.scheduler
    rungs = bracket_rungs(sched.grace_period, sched.reduction_factor, spec.epochs, sched.brackets)
    weights = bracket_weights(rungs)
    per_trial = sum(w * expected_epochs(r, sched.reduction_factor, spec.epochs) for w, r in zip(weights, rungs))
    return Estimate(spec.num_samples, spec.epochs, sched.grace_period, sched.reduction_factor, rungs, weights,
                    per_trial)


def local_resources() -> dict:
    """This machine's CPUs (those this process may use) and GPUs, found without starting Ray."""
    import torch

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return {"CPU": float(cpus), "GPU": float(torch.cuda.device_count())}


def cluster_resources(address: str) -> dict:
    """The resources of the Ray cluster at `address`, joining it as a driver only: no task, no actor."""
    import ray

    from .runner import connect

    started = connect(address, dashboard=False)
    try:
        total = ray.cluster_resources()
        return {"CPU": float(total.get("CPU", 0)), "GPU": float(total.get("GPU", 0))}
    finally:
        if started:
            ray.shutdown()


@dataclass(frozen=True)
class Report:
    spec: SweepSpec
    cluster: str  # where the resources were counted
    plan: Plan
    estimate: Estimate
    home: str
    warnings: tuple[str, ...]


def check(spec: SweepSpec, *, address: Optional[str] = None, overwrite: bool = False) -> Report:
    """Every check `sweep run` makes before it writes, with a name already taken as a warning (a check
    changes nothing, so it cannot be refused for it), then the plan and the estimate."""
    from . import runner, tracking

    home = runner.sweep_home(spec)
    runner.check_writable(home)
    tracking.check(spec, create=False)
    warnings = []
    taken = None if overwrite else runner.taken_by(spec, home)
    if taken:
        warnings.append(f"sweep {spec.name!r} already exists in {taken}; `sweep run` would refuse it: `sweep resume "
                        f"{spec.name}` continues it, --name picks another name, --overwrite replaces it")
    address = address or spec.address or os.environ.get("RAY_ADDRESS")
    if address:
        total, cluster = cluster_resources(address), f"the Ray cluster at {address}"
    else:
        total, cluster = local_resources(), "this machine (Ray not started)"
    return Report(spec, cluster, plan(spec, total), asha_estimate(spec), str(home), tuple(warnings))


def describe(report: Report) -> str:
    """The report as one YAML document (spec, plan, estimate), with comments that say what each part is."""
    p, e = report.plan, report.estimate
    plan = {"cluster": {"CPU": p.cluster_cpus, "GPU": p.cluster_gpus}, "execution": p.execution,
            "cpu_per_trial": p.cpu_per_trial, "gpu_per_trial": p.gpu_per_trial,
            "max_concurrent_trials": p.max_concurrent, "drivers": report.spec.drivers}
    if p.execution == "packed":
        plan.update(trainers=p.trainers, pack_size=p.pack_size,
                    threads_per_trainer=CPU_TRAINER_THREADS if not p.cluster_gpus else "torch's default")
    else:
        plan["threads_per_trial"] = p.threads_per_trial
    estimate = {"num_samples": e.num_samples, "max_t": e.max_t, "grace_period": e.grace_period,
                "reduction_factor": e.reduction_factor, "brackets": len(e.rungs),
                "rungs": [list(r) for r in e.rungs] if len(e.rungs) > 1 else list(e.rungs[0]),
                "epochs_per_trial": round(e.epochs_per_trial, 3), "trial_epochs": round(e.trial_epochs, 1),
                "trial_epochs_without_asha": e.num_samples * e.max_t}
    if len(e.rungs) > 1:
        estimate["bracket_weights"] = [round(w, 3) for w in e.weights]

    def dump(value) -> str:
        return yaml.safe_dump(value, sort_keys=False, default_flow_style=None, width=110)

    return "".join([
        f"# sweep {report.spec.name}: the resolved sweep file; results would go to {report.home}\n",
        dump({"sweep": report.spec.to_dict()}),
        f"# the plan on {report.cluster}\n",
        dump({"plan": plan}),
        "# ASHA's expected trial-epochs: every trial trains to its first rung, 1/reduction_factor**i of them\n"
        "# past rung i to the next, and 1/reduction_factor**n past the last rung to max_t (ASHA promotes\n"
        "# more while its rungs fill, so a sweep runs somewhat more)\n",
        dump({"estimate": estimate}),
    ])
