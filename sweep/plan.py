"""How a sweep's trials use the cluster: trial or packed execution, resources per trial, concurrency,
trainers and pack sizes, from the sweep file and the cluster's CPU and GPU counts.

No Ray (the cluster's counts are asked of Ray only when not given) and no torch: `sweep check`, the
runner, the packed trainers and `sweep retrain` all plan with it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from .errors import SweepError

if TYPE_CHECKING:  # the trainers of a simulated sweep import this module, and must not import torch
    from .spec import SweepSpec

TRIALS_PER_GPU_MAX = 16  # "auto" GPU fraction in trial execution: at most this many trials share one GPU
GPU_PACK_SIZE = 256  # members per GPU trainer: a pack this size keeps an H100 busy (BENCHMARKS.md, pack speed)
CPU_PACKS_PER_CORE = 2  # members per single-threaded CPU trainer (one trainer per core)
CPU_TRAINER_THREADS = 1  # see packed_plan


@dataclass(frozen=True)
class Plan:
    """How trials run on the cluster Ray reports."""

    execution: str  # trial | packed
    cpu_per_trial: float
    gpu_per_trial: float
    max_concurrent: Optional[int]
    cluster_cpus: float
    cluster_gpus: float
    threads_per_trial: int = 1
    pack_size: int = 0
    trainers: int = 0


def plan(spec: SweepSpec, total: Optional[dict] = None) -> Plan:
    """Resources per trial from the spec and the cluster (`total`: CPU and GPU counts, by default what
    Ray reports); refuse requests the cluster can never meet."""
    if total is None:
        import ray

        total = ray.cluster_resources()
    cpus, gpus = float(total.get("CPU", 0)), float(total.get("GPU", 0))
    res = spec.resources
    device = spec.train.get("device", "auto")
    if device == "cuda" and gpus == 0:
        raise SweepError("train.device is cuda but the Ray cluster has no GPU; set train.device: auto or cpu")
    if res.gpu not in ("auto", 0) and gpus == 0:
        raise SweepError(f"resources.gpu={res.gpu} asks for a GPU per trial but the Ray cluster has none "
                         "(trials would wait forever); set resources.gpu: 0 or auto")
    if res.cpu > cpus:
        raise SweepError(f"resources.cpu={res.cpu:g} per trial but the Ray cluster has {cpus:g} CPUs "
                         "(trials would wait forever); lower resources.cpu")
    use_gpu = gpus > 0 and res.gpu != 0 and device != "cpu"
    execution = res.execution if res.execution != "auto" else ("packed" if use_gpu else "trial")
    if execution == "packed":
        return packed_plan(spec, cpus, gpus if use_gpu else 0.0)
    gpu = 0.0
    slots = int(cpus // res.cpu)
    if use_gpu:
        per_gpu = max(1, min(TRIALS_PER_GPU_MAX, int(cpus / gpus / res.cpu)))
        gpu = 1.0 / per_gpu if res.gpu == "auto" else float(res.gpu)
        slots = min(slots, int(gpus // gpu))
    # A concurrency limit also lets Tune start that many trials at once (with a searcher it starts
    # one at a time otherwise): the cluster fills in one wave instead of one trial per actor start-up.
    concurrent = min(spec.max_concurrent_trials or slots, slots, spec.num_samples)
    return Plan("trial", res.cpu, gpu, max(1, concurrent), cpus, gpus, threads_per_trial=res.threads_per_trial)


def spare_trials(concurrent: int) -> int:
    """How many trials a packed sweep's driver keeps suggested and waiting beyond the `concurrent` running.

    The proxies' CPU shares fill the cluster, so a waiting trial cannot start an actor of its own; when a
    trial ends, Tune hands its actor (a started process) to a waiting trial, which it does only if one is
    waiting. Under ASHA several trials of a pack can end within one step of Tune's loop: a few waiting
    trials keep every one of those actors, more would only suggest configurations earlier than needed.
    """
    return min(16, max(2, concurrent // 16))


DRIVER_POOL = "aesweep_driver_{}"  # a Ray resource: driver k's proxy slots, on a Ray the sweep starts
POOL_UNITS = 1_000_000_000


def driver_pools(drivers: int) -> dict[str, float]:
    """The resources a Ray started for a packed sweep of several drivers declares: a pool per driver, of
    which each of its proxies takes its share (driver_slot).

    Without them the drivers' proxies draw on one pool of CPU shares: the share a driver's stopped actor
    frees goes to whichever driver's waiting trial Ray places first, and that trial starts a process of its
    own, so the spare trials that keep every proxy in use (spare_trials) start processes instead. Ray has no
    public way to add a resource to a running cluster, so a cluster started by hand goes without.
    """
    return {DRIVER_POOL.format(k): float(POOL_UNITS) for k in range(drivers)} if drivers > 1 else {}


def driver_slot(driver: int, concurrent: int) -> dict[str, float]:
    """What each proxy of driver `driver` takes from its pool: exactly `concurrent` fit in it (whole units,
    rounded down; for any `concurrent` up to sqrt(POOL_UNITS)), so its spare trials never start one."""
    return {DRIVER_POOL.format(driver): float(POOL_UNITS // concurrent)}


def packed_plan(spec: SweepSpec, cpus: float, gpus: float) -> Plan:
    """Trainers and members per trainer: one trainer per GPU, or, without GPUs, one per core.

    On a CPU, packing saves per-trial overhead, not arithmetic, and one single-threaded trainer per
    core keeps each core as busy as a one-thread trial would, which a multi-threaded pack does not
    (BENCHMARKS.md). Trainers reserve no Ray CPU: the proxies' shares account for every core, so Ray
    starts exactly as many members as the packs hold.
    """
    trainers = int(gpus) if gpus >= 1 else max(1, int(cpus))
    pack_size = spec.resources.pack_size or (GPU_PACK_SIZE if gpus else CPU_PACKS_PER_CORE)
    concurrent = min(pack_size * trainers, spec.num_samples, spec.max_concurrent_trials or pack_size * trainers)
    # Ray counts resources in steps of 0.0001: rounded down, `concurrent` shares fit in the cluster's CPUs
    # (2 / 3 rounded to 0.6667 would fit only 2).
    proxy_cpu = max(0.001, min(1.0, math.floor(cpus / concurrent * 10_000) / 10_000))
    return Plan("packed", proxy_cpu, 0.0, concurrent, cpus, gpus, pack_size=pack_size, trainers=trainers)
