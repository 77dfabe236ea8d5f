"""Packed execution: the trials that share a device train together as one batched model.

One `PackTrainer` actor per GPU (one per node without GPUs) holds an `aemodels.Pack` per shape of
model and trains, epoch by epoch in lockstep, every member whose trial has asked for its next epoch.
Each Tune trial stays an ordinary trial (Optuna samples it, ASHA stops it, it has its own checkpoints
and table rows): it runs `run_packed_trial`, a proxy that joins a trainer, asks for the epochs up to
its next report (ASHA's next rung by default, `TrialRecord`) and reports them to Tune. Proxies never import torch;
each is a Ray worker process of its own, started once and handed from trial to trial (OpenPacks). Trials
join and leave between epochs. This module imports no torch at the top: the trainer imports it inside.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import ray
from ray import tune

from aemodels.status import Status

from .plan import CPU_TRAINER_THREADS
from .trial import ComputeClock, Reporting, TrialRecord, ended_before

logger = logging.getLogger(__name__)
NAMESPACE = "aesweep"
STALE_S = 300.0  # a member that has not asked for an epoch this long is dropped (its proxy died)
FILL_S = 120.0  # the longest a sweep's trainers wait for its first wave of trials to join (see OpenPacks)
QUIET_S = 20.0  # ... or, once some have joined, for the next one
IN_PACK = "in_pack_s"  # a row's wall time in its pack's round, for the proxy's wait_s; not kept in the tables
BETWEEN = "between_s"  # a row's wall time since its member's previous epoch in the same request; likewise


# ---- the trainer ------------------------------------------------------------------------------

@dataclass(eq=False)
class _Slot:
    trial_id: str
    config: object  # TrainConfig
    state: object  # TrainState while parked; None while its weights live in a pack
    pack_key: Optional[tuple] = None
    ready: bool = False
    future: Optional[asyncio.Future] = None
    last_seen: float = field(default_factory=time.monotonic)
    until: int = 0  # the epoch its proxy reports next: the member trains up to it, or to its end
    state_by: float = math.inf  # time.monotonic() from which its proxy wants the state (a checkpoint is due)
    rows: list = field(default_factory=list)  # the rows of the epochs trained for this request
    ended_at: float = 0.0  # time.monotonic() when its last epoch was trained


class PackTrainer:
    """Trains every member that is ready, one epoch per round; see the module docstring."""

    def __init__(self, threads: Optional[int] = None, gather_s: Optional[float] = None, dataset=None,
                 data_dir: Optional[str] = None, simulate: Optional[dict] = None, closed_until: float = 0.0):
        # simulate (the spec's `simulate:` section): sweep.simulate.SimPack stands in for aemodels.Pack, and
        # this process never imports torch, so a trainer on a GPU declared to Ray but absent never tries CUDA.
        self.simulate = simulate
        if simulate is None:
            import torch

            from aemodels.data import provide

            if dataset is not None:  # read once by the driver: no files or torchvision needed here
                provide(dataset, data_dir)
            if threads:
                torch.set_num_threads(threads)
            # This process only trains packs: let cuDNN pick the fastest grouped-convolution kernels.
            torch.backends.cudnn.benchmark = True
        self.fixed_gather_s = gather_s
        # No round before this time (time.time()) unless opened: the first wave of trials joins first
        # (OpenPacks). A trainer Ray restarts after a crash trains at once: its members are waiting.
        context = ray.get_runtime_context()
        restarted = context.get_actor_id() is not None and context.was_current_actor_reconstructed
        self.closed_until = 0.0 if restarted else closed_until
        self.members: dict[str, _Slot] = {}
        self.packs: dict[tuple, object] = {}
        self.in_pack: dict[tuple, dict[str, _Slot]] = {}
        self.cond = threading.Condition()
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.last_round_s = 1.0
        # Where this trainer runs: in its report and each member's rows.
        self.name, self.node_id, self.gpu_ids = context.get_actor_name(), context.get_node_id(), ray.get_gpu_ids()
        self.pid = os.getpid()
        self.stats = {"rounds": 0, "member_epochs": 0, "requests": 0, "train_s": 0.0, "serialize_s": 0.0, "wait_s": 0.0,
                      "restack_s": 0.0, "started": time.time()}
        threading.Thread(target=self._train_forever, name="pack-trainer", daemon=True).start()

    # -- called by the proxies (async actor methods run on the actor's event loop) --

    async def join(self, trial_id: str, config: dict, state_bytes: Optional[bytes]) -> int:
        """Add (or replace) a member from its config and checkpoint; return the epoch it starts from."""
        self.loop = asyncio.get_running_loop()
        if self.simulate is not None:
            from .simulate import SimState

            state = SimState.initial(config) if state_bytes is None else SimState.from_bytes(state_bytes)
        else:
            from aemodels import TrainConfig

            config = TrainConfig.from_dict(config)
            state = self._decode(config, state_bytes)
        with self.cond:
            old = self.members.pop(trial_id, None)
            if old is not None and old.future is not None and not old.future.done():
                old.future.cancel()
            self.members[trial_id] = _Slot(trial_id, config, state)
        return state.epoch

    @staticmethod
    def _decode(config, state_bytes: Optional[bytes]):
        from aemodels import TrainState

        if state_bytes is None:
            return TrainState.initial(config)
        import torch

        return TrainState.from_dict(torch.load(io.BytesIO(state_bytes), map_location="cpu", weights_only=True))

    async def next_epochs(self, trial_id: str, until: int, state_after_s: float = math.inf):
        """Train this member up to epoch `until`, or fewer: to its end (completed, diverged), or to the first
        epoch that ends `state_after_s` seconds from now or later (its proxy's checkpoint is due).
        Returns (the rows of those epochs, the serialized state after the last of them, or None when it
        diverged). A proxy reports only at rungs, so nothing is decided in between: the member stays in
        its pack without a round trip per epoch, and its state is serialized only when reported."""
        future = asyncio.get_running_loop().create_future()
        now = time.monotonic()
        with self.cond:
            slot = self.members.get(trial_id)
            if slot is None:
                raise KeyError(f"trial {trial_id} is not a member of this trainer (it was dropped); rejoin")
            slot.ready, slot.future, slot.last_seen, slot.rows = True, future, now, []
            slot.until, slot.state_by = until, now + state_after_s
            self.stats["requests"] += 1
            self.cond.notify_all()
        return await future

    def leave(self, trial_id: str) -> None:
        with self.cond:
            slot = self.members.pop(trial_id, None)
            if slot is not None and slot.future is not None and not slot.future.done():
                slot.future.cancel()  # leave runs on the actor's event loop, which owns the future
            self.cond.notify_all()

    def load(self) -> int:
        return len(self.members)

    def open(self) -> None:
        with self.cond:
            self.closed_until = 0.0
            self.cond.notify_all()

    def report(self) -> dict:
        """Where the trainer's time went, for benchmarks (and whether this process imported torch)."""
        import sys

        return {**self.stats, "wall_s": time.time() - self.stats["started"], "members": len(self.members),
                "name": self.name, "node_id": self.node_id, "gpu_ids": self.gpu_ids, "torch_imported": "torch" in sys.modules}

    # -- the training thread --

    def _gather(self) -> list[_Slot]:
        """Wait for a ready member, then until every member is ready or the gather window closes."""
        with self.cond:
            self.cond.wait_for(lambda: time.time() >= self.closed_until,
                               timeout=max(0.0, self.closed_until - time.time()))
            self.cond.wait_for(lambda: any(s.ready for s in self.members.values()))
            window = self.fixed_gather_s if self.fixed_gather_s is not None else \
                min(5.0, max(0.2, 0.5 * self.last_round_s))
            deadline = time.monotonic() + window
            while not all(s.ready for s in self.members.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            now = time.monotonic()
            for slot in [s for s in self.members.values() if not s.ready and now - s.last_seen > STALE_S]:
                logger.warning("dropping trial %s: no request for %.0f s", slot.trial_id, now - slot.last_seen)
                del self.members[slot.trial_id]
            batch = [s for s in self.members.values() if s.ready]
            for slot in batch:
                slot.ready = False
            return batch

    def _train_forever(self) -> None:
        while True:
            started = time.monotonic()
            batch = self._gather()
            self.stats["wait_s"] += time.monotonic() - started
            by_key: dict[tuple, list[_Slot]] = {}
            for slot in batch:
                by_key.setdefault(self._pack_key(slot), []).append(slot)
            round_start = time.monotonic()
            for key in list(self.packs) + [k for k in by_key if k not in self.packs]:
                self._train_pack(key, by_key.get(key, []))
            self.last_round_s = time.monotonic() - round_start
            self.stats["rounds"] += 1

    @staticmethod
    def _pack_key(slot: _Slot) -> tuple:
        if isinstance(slot.config, dict):  # simulated: one pack holds every member
            return ("simulated",)
        from aemodels import Pack

        return Pack.key_of(slot.config) + (slot.config.device, slot.config.cuda_graphs, slot.config.matmul_precision)

    def _train_pack(self, key: tuple, batch: list[_Slot]) -> None:
        try:
            started, started_cpu = time.monotonic(), time.process_time()
            pack = self._restack(key, batch)
            if not batch:
                return
            tick = time.monotonic()
            rows = pack.run_epoch()
            self.stats["train_s"] += time.monotonic() - tick
            self.stats["member_epochs"] += len(rows)
            # Each member's share of this pack's round: the restack and the epoch split evenly, plus the
            # serializing of its own state; the shares add up to the time the trainer spent on the pack.
            shared_s = (time.monotonic() - started) / len(batch)
            shared_cpu = (time.process_time() - started_cpu) / len(batch)
            tick = time.monotonic()
            going_on = []
            for slot in batch:
                own, own_cpu = time.monotonic(), time.process_time()
                row = {**rows[slot.trial_id], "device": str(pack.device), "trainer": self.name,
                       "trainer_pid": self.pid}
                if slot.rows:  # a later epoch of one request: its wait since the member's previous epoch
                    row[BETWEEN] = max(0.0, started - slot.ended_at)
                ended = row["status"] in (Status.COMPLETED, Status.DIVERGED)
                last = ended or row["epoch"] >= slot.until or own >= slot.state_by
                payload = self._serialize(pack.snapshot(slot.trial_id)) \
                    if last and row["status"] != Status.DIVERGED else None
                row["device_s"] = shared_s + time.monotonic() - own
                row["cpu_s"] = shared_cpu + time.process_time() - own_cpu
                row[IN_PACK] = time.monotonic() - started  # the wall time the member spent in this round
                slot.rows.append(row)
                slot.ended_at = time.monotonic()
                if last:
                    self._resolve(slot, (slot.rows, payload))
                else:
                    going_on.append(slot)
            with self.cond:  # ready for the next round, unless its trial left meanwhile
                for slot in going_on:
                    if self.members.get(slot.trial_id) is slot:
                        slot.ready = True
            self.stats["serialize_s"] += time.monotonic() - tick
            done = {s.trial_id for s in batch if rows[s.trial_id]["status"] in (Status.COMPLETED, Status.DIVERGED)}
            if done:
                pack.retain([k for k in pack.keys if k not in done])
                for trial_id in done:
                    self.in_pack[key].pop(trial_id, None)
        except Exception as exc:  # the members' trials fail and Tune retries them from their checkpoints
            logger.exception("packed training failed")
            self.packs.pop(key, None)
            self.in_pack.pop(key, None)
            for slot in batch:
                self._resolve(slot, exc)

    def _restack(self, key: tuple, batch: list[_Slot]):
        """Make the pack hold exactly this round's members: park the others, add the newcomers."""
        tick = time.monotonic()
        pack = self.packs.get(key)
        if pack is None and batch and self.simulate is not None:
            from .simulate import SimPack

            pack = self.packs[key] = SimPack(self.simulate.get("seconds_per_epoch", 0.0))
            self.in_pack[key] = {}
        if pack is None and batch:
            from aemodels import Pack, load_dataset, resolve_device

            config = batch[0].config
            dataset = load_dataset(config.dataset, config.data_dir, resolve_device(config.device))
            pack = self.packs[key] = Pack.for_config(config, dataset)
            self.in_pack[key] = {}
        if pack is None:
            return None
        members = self.in_pack[key]
        wanted = {s.trial_id for s in batch}
        with self.cond:
            current = dict(self.members)
        for trial_id, slot in list(members.items()):
            if current.get(trial_id) is not slot:  # left, or replaced by a rejoin
                del members[trial_id]
            elif trial_id not in wanted:  # still a member, not ready this round: park its state
                slot.state, slot.pack_key = pack.snapshot(trial_id), None
                del members[trial_id]
        incoming = {s.trial_id: s.state for s in batch if s.trial_id not in members}
        pack.update(list(members), incoming)
        for slot in batch:
            slot.state, slot.pack_key = None, key
            members[slot.trial_id] = slot
        self.stats["restack_s"] += time.monotonic() - tick
        return pack

    @staticmethod
    def _serialize(state) -> bytes:
        if hasattr(state, "to_bytes"):  # a simulated state
            return state.to_bytes()
        import torch

        buffer = io.BytesIO()
        torch.save(state.to_dict(), buffer)
        return buffer.getvalue()

    def _resolve(self, slot: _Slot, value) -> None:
        future = slot.future

        def settle():
            if future is None or future.done():
                return
            if isinstance(value, BaseException):
                future.set_exception(value)
            else:
                future.set_result(value)

        self.loop.call_soon_threadsafe(settle)


# ---- the proxy: what each Tune trial runs -------------------------------------------------------

_handles: dict[str, object] = {}


def _trainer(names: list[str], trial_id: str = ""):
    """The least loaded trainer; among equally loaded ones, the trial's number picks (round robin).

    Tune starts a sweep's first wave of trials at once, and each proxy reads the loads before any of
    them has joined: always taking the first of the least loaded could send that whole wave to one
    trainer (GPU) and leave the others idle until the next trials start.
    """
    for name in names:
        if name not in _handles:
            _handles[name] = ray.get_actor(name, namespace=NAMESPACE)
    handles = [_handles[n] for n in names]
    if len(handles) == 1:
        return handles[0]
    loads = ray.get([h.load.remote() for h in handles])
    least = [h for h, load in zip(handles, loads) if load == min(loads)]
    return least[_trial_number(trial_id) % len(least)]


def _trial_number(trial_id: str) -> int:
    """Tune numbers a sweep's trials in its ids ('3f9a2_00007'); any other id still gets a stable number."""
    tail = trial_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else zlib.crc32(trial_id.encode())


def run_packed_trial(config: dict, *, base: dict, trainers: list[str], reporting: Reporting = Reporting(),
                     finished: Optional[dict[str, Optional[dict]]] = None) -> None:
    """The Tune function trainable of packed execution (imports no torch).

    It asks for the epochs up to its next report (`TrialRecord.next_report`) in one request: the trainer
    sends the state only with the last of them, which the proxy reports with the epochs before it.
    Members still join and leave the pack between any two epochs.
    """
    if ended_before(finished):
        return
    trial_id = tune.get_context().get_trial_id()
    trainer = _trainer(trainers, trial_id)
    settings = {**base, **config}
    where = {"execution": "packed", "node_id": ray.get_runtime_context().get_node_id()}
    clock = ComputeClock()  # the proxy's own CPU time is not counted: the trainer's rows carry the training's
    record = TrialRecord(reporting=reporting)
    # The trainer decodes the state: a checkpoint it cannot read falls back to the one before.
    joined = record.restore(lambda path: ray.get(trainer.join.remote(trial_id, settings, path.read_bytes())))
    if joined is None:
        ray.get(trainer.join.remote(trial_id, settings, None))
    epochs = int(settings["epochs"])
    try:
        while True:
            until, state_after_s = record.next_report((record.history[-1]["epoch"] if record.history else 0) + 1,
                                                      epochs)
            rows, payload = ray.get(trainer.next_epochs.remote(trial_id, until, state_after_s))
            # The request's wall time beyond its epochs' rounds is the first epoch's wait; each later epoch
            # waited only for its next round.
            waited = clock.lap(sum(r.pop(IN_PACK) + r.get(BETWEEN, 0.0) for r in rows))
            for i, row in enumerate(rows, 1):
                wait_s = row.pop(BETWEEN, waited["wait_s"])
                row = {**row, **where, "wait_s": wait_s, "started_at": waited["started_at"]}
                if i < len(rows):
                    record.report(row, None, due=False)
                else:
                    write = (lambda path: path.write_bytes(payload)) if payload is not None else None
                    record.report(row, write, due=True)
            if rows[-1]["status"] in (Status.COMPLETED, Status.DIVERGED):
                return
    finally:  # also when ASHA stops the trial: Tune ends the trial's thread inside tune.report
        with contextlib.suppress(Exception):
            trainer.leave.remote(trial_id)


# ---- the driver side ----------------------------------------------------------------------------

def trainer_names(spec, plan) -> list[str]:
    return [f"{spec.name}-trainer-{i}" for i in range(plan.trainers)]


@contextlib.contextmanager
def trainers(spec, plan, home: Path, dataset=None):
    """Start the sweep's trainer actors; when the sweep ends, record where their time went and stop them."""
    actor = ray.remote(PackTrainer)
    gpu = bool(plan.cluster_gpus)
    # A restarted trainer runs __init__ again with the same arguments: the dataset must stay in the
    # object store until the sweep ends, so the driver holds its reference here (a plain value would
    # be put implicitly and freed after the first start, and every restart would then fail).
    dataset = None if dataset is None else ray.put(dataset)
    handles = [
        actor.options(name=name, namespace=NAMESPACE, num_cpus=0, num_gpus=1 if gpu else 0,
                      scheduling_strategy="DEFAULT" if gpu else "SPREAD", max_restarts=-1,
                      max_concurrency=4 * plan.pack_size + 16, get_if_exists=False)
        .remote(None if gpu else CPU_TRAINER_THREADS, dataset=dataset, data_dir=spec.data_dir,
                simulate=None if spec.simulate is None else dataclasses.asdict(spec.simulate),
                closed_until=time.time() + FILL_S)
        for name in trainer_names(spec, plan)
    ]
    ray.get([h.load.remote() for h in handles])
    try:
        yield handles
    finally:
        with contextlib.suppress(Exception):
            reports = ray.get([h.report.remote() for h in handles], timeout=30)
            (home / "trainers.json").write_text(json.dumps(reports, indent=1))
        for handle in handles:
            with contextlib.suppress(Exception):
                ray.kill(handle)


class OpenPacks(tune.Callback):
    """Opens the sweep's trainers once every trial of the first wave, every driver's, has joined one.

    Tune reuses a finished trial's actor for the next trial only when that trial is already waiting,
    and then ends the actor it had begun to start for it, work lost. A proxy's process takes about a
    second of CPU to start (Ray, Tune and the trial code); a simulated or GPU member's trial can end
    sooner. Were the trainers to train the first proxies to join, their trials would end while the
    others were still starting, each end would cost one of those starts, and the packs would never
    fill. Held until the first wave has joined, every proxy starts once and then runs trial after
    trial. The trainers open on their own after FILL_S in any case.
    """

    def __init__(self, trainers: list[str], concurrent: int, wave: Optional[int] = None):
        # concurrent: this driver's trials at once; wave: the sweep's, every driver's (the trainers are shared)
        self.trainers, self.concurrent, self.handles, self.opened = trainers, concurrent, [], False
        self.others = max(0, (wave or concurrent) - concurrent)
        self.checked = self.changed = time.monotonic()
        self.joined = 0

    def on_step_end(self, iteration: int, trials: list, **info):
        now = time.monotonic()
        if self.opened or now - self.checked < 0.2:
            return
        self.checked = now
        # The spare trials (plan.spare_trials) wait for an actor another trial leaves.
        live = min(self.concurrent, sum(1 for t in trials if t.status in ("RUNNING", "PENDING"))) + self.others
        try:
            # Not _trainer's module-wide cache: the driver outlives a sweep's trainers (the next sweep of a
            # notebook or test starts new ones under the same names), a proxy does not.
            self.handles = self.handles or [ray.get_actor(name, namespace=NAMESPACE) for name in self.trainers]
            joined = sum(ray.get([h.load.remote() for h in self.handles]))
            if joined != self.joined:
                self.joined, self.changed = joined, now
            # A trial that cannot be placed (the last share of a fragmented cluster) never joins: once no
            # proxy has joined for QUIET_S, the rest are not coming.
            if live and (joined >= live or (joined and now - self.changed >= QUIET_S)):
                ray.get([h.open.remote() for h in self.handles])
                self.opened = True
        except Exception:  # Ray's errors reaching a trainer: the sweep goes on, and the trainers open after FILL_S
            logger.warning("could not open the packed trainers; they open on their own after %.0f s", FILL_S,
                           exc_info=True)
            self.opened = True


def make_packed_trainable(spec, plan, base: dict, finished: Optional[dict[str, Optional[dict]]] = None,
                          slot: Optional[dict[str, float]] = None):
    fn = tune.with_parameters(run_packed_trial, base=base, trainers=trainer_names(spec, plan),
                              reporting=Reporting.of(spec), finished=finished)
    return tune.with_resources(fn, {"cpu": plan.cpu_per_trial, **(slot or {})})
