"""SweepSpec -> Ray Tune `Tuner(...).fit()` with StudySearch (TPE, an Optuna study) and ASHA; and `resume`
after a crash.

The sweep's folder holds the resolved spec (sweep.yaml), the Optuna study (study.journal), Ray's experiment
folder (ray/) and the tables built from it. Ray starts locally, bound to 127.0.0.1 with its dashboard
off, unless an address joins an existing cluster.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import glob
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import yaml

from aemodels import DataError, load_dataset

from . import results as results_mod
from . import status as status_mod
from . import storage
from . import tracking
from .errors import Interrupted, SweepError
from .experiment import (EXPERIMENT_DIR, can_continue, check_resumable, experiment_dirs, experiment_name,
                         experiment_path, read_experiment, restart_ends)
from .results import SPEC_FILE, Results
from .drivers import other_drivers
from .plan import Plan, driver_pools, driver_slot, plan, spare_trials
from .searcher import STUDY_URL_ENV
from .study import finished_in_study, repair_journal, snapshot_name, storage_error, study_path, study_url
from .spec import SEARCHED, SweepSpec

logger = logging.getLogger(__name__)
# Modules the worker processes of a local Ray import before they take work (`preload_modules`), so that
# a worker's first trial does not wait for them; on a cluster `ray start` takes such a list from
# RAY_preload_python_modules (configs/cluster/). Ray Tune and the trainables, which every trial actor
# imports, and torch through aemodels, which a trial of its own imports but a packed trial's proxy never
# does (their cost per process: BENCHMARKS.md, worker prestart).
TRIAL_CODE = ("sweep.trial", "sweep.packed")
# Ray binds its GCS, raylets, workers and agents to every interface (its agents to the machine's external
# address) even when told to use 127.0.0.1 as the node's address; with this variable at 0, read once when
# Ray is imported, Ray treats the machine as a single-node cluster and every listener is on 127.0.0.1. A
# driver that joins a cluster must not have it (it would announce 127.0.0.1 as its own address).
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
TORCH = ("aemodels",)


# ---- preparing ------------------------------------------------------------------------------------

def sweep_home(spec: SweepSpec) -> Path:
    return results_mod.local_home(spec)


def check_writable(folder: Path) -> None:
    """Fail early (and leave nothing behind) when the results folder cannot be created or written."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is a file")
        with tempfile.TemporaryFile(dir=probe):  # os.access would say yes to root on a read-only mount
            pass
    except OSError as exc:
        raise SweepError(f"results folder {folder} is not writable ({exc.strerror or exc}); "
                         "fix its permissions or set storage_path to a writable folder") from None


def taken_by(spec: SweepSpec, home: Path) -> Optional[str]:
    """Where a sweep of this name already lives (its folder or its object-store copy), if anywhere."""
    if home.exists():
        return str(home)
    remote = results_mod.remote_home(spec)
    if remote:
        try:
            return remote if storage.exists(remote) else None
        except OSError as exc:
            raise SweepError(f"storage_path {spec.storage_path} cannot be reached ({str(exc).splitlines()[0]}); "
                             "check the URI and the credentials") from None
    return None


def _refuse_taken(spec: SweepSpec, home: Path) -> None:
    taken = taken_by(spec, home)
    if taken:
        raise SweepError(f"sweep {spec.name!r} already exists in {taken}; `sweep resume {spec.name}` continues it, "
                         "--name picks another name, --overwrite replaces it")


def prepare(spec: SweepSpec, overwrite: bool = False):
    """Every check that needs no Ray, before anything is written or deleted: the name is free (or
    --overwrite), the folder writable, and the dataset readable to its last byte (a truncated file
    found only after --overwrite deleted the old sweep would lose it). Returns (home, dataset)."""
    home = sweep_home(spec)
    if not overwrite:
        _refuse_taken(spec, home)
    check_writable(home)
    if spec.simulate is not None:  # simulated training reads no images
        return home, None
    try:
        dataset = load_dataset(spec.dataset, spec.data_dir)
    except DataError as exc:
        raise SweepError(str(exc)) from None
    return home, dataset


@contextlib.contextmanager
def claim(home: Path, fix: str = "wait for it to end, or pick another name with --name"):
    """Hold the sweep's name for as long as this driver runs: an exclusive lock on `.<name>.lock` beside
    the sweep's folder. Two drivers of one name would share a folder and a journal and lose trials.

    The lock lives beside the folder, not in it, so that --overwrite can delete the folder while holding
    it; the kernel releases it when the driver dies, however it dies. It guards one machine's (or one
    shared file system's) results folder, which is where the sweep's folder lives.
    """
    from filelock import FileLock, Timeout

    made = [p for p in (home.parent, *home.parent.parents) if not p.exists()]
    home.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(home.parent / f".{home.name}.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise SweepError(f"sweep {home.name!r} is in use by another `sweep` command right now (it holds "
                         f"{lock.lock_file}); {fix}") from None
    except OSError as exc:
        raise SweepError(f"cannot lock {lock.lock_file} ({exc.strerror or exc}); fix the results folder's "
                         "permissions") from None
    try:
        prefix = driver_lock(home, 0).name.removesuffix("0.lock")
        for path in sorted(home.parent.glob(f"{glob.escape(prefix)}*.lock")):
            if lock_held(path):
                raise SweepError(f"driver {path.name[len(prefix):-len('.lock')]} of sweep {home.name!r} is still "
                                 f"running (it holds {path}): it stops by itself once it notices that the sweep's "
                                 "first driver is gone; wait for it to end, then run this again")
        yield
    finally:
        # A command refused before it wrote the sweep's folder leaves no trace: no lock file, and no
        # results folder it made for it. Unlinked while still held, so no other driver can hold it then.
        if not home.exists():
            Path(lock.lock_file).unlink(missing_ok=True)
            for folder in made:
                with contextlib.suppress(OSError):
                    folder.rmdir()
        lock.release()


def driver_lock(home: Path, driver: int) -> Path:
    """The lock another driver of the sweep (sweep.driver) holds while it runs. `claim` refuses while one is
    held: such a driver outlives a first driver that was killed, and writes into the sweep's folder until it
    has stopped, so a `sweep resume` (or --overwrite) beside it would run its experiment twice."""
    return home.parent / f".{home.name}.driver-{driver}.lock"


def lock_held(path: Path) -> bool:
    """Whether a process holds the lock `path` (a file lock: released when its holder dies, however)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    except OSError:  # a lock file this user cannot open is no driver of this user's
        return False
    lock.release()
    return False


# ---- Ray --------------------------------------------------------------------------------------

def connect(address: Optional[str], dashboard: bool, spec: Optional[SweepSpec] = None) -> bool:
    """Join the cluster at `address`, else start a local Ray on 127.0.0.1 whose worker processes start
    with it and import what `spec`'s trials need before they take work (`preload_modules`;
    RAY_preload_python_modules and RAY_enable_worker_prestart, if set, win). True if we started it."""
    import ray

    # Ray's warnings (token auth on, snapshot timing) would break the one-line errors and the compact
    # view; its errors still reach stderr through logging's last-resort handler, which follows sys.stderr.
    logging.getLogger("ray").setLevel(logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our Progress callback is the view; Tune's tables stay off
    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return False
    if address:
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except Exception as exc:
            raise join_error(address, exc) from None
        return True
    if os.environ.get(LOOPBACK_ENV) != "0":
        raise SweepError(f"a local Ray started from this process would listen on every network interface; set "
                         f"{LOOPBACK_ENV}=0 in the environment before Ray is imported (the `sweep` command does), "
                         "or start Ray yourself and pass its address")
    preload = preload_modules(spec) if spec is not None else TRIAL_CODE
    # enable_worker_prestart: those workers start with the raylet, not when this driver joins, so their
    # imports (torch, seconds on a small machine) overlap the rest of Ray's start-up (BENCHMARKS.md, worker prestart).
    wanted = {"preload_python_modules": list(preload), "enable_worker_prestart": True}
    config = {name: value for name, value in wanted.items() if f"RAY_{name}" not in os.environ}  # Ray's own wins
    # "local", not None: None would join whatever cluster `ray start` last left on this machine.
    ray.init(address="local", include_dashboard=dashboard, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False, _system_config=config,
             resources=driver_pools(spec.drivers) if spec is not None else None)
    return True


def join_error(address: str, exc: Exception) -> SweepError:
    """Why ray.init(address=...) failed, in one line with the fix. A cluster from `ray start --head` has
    token authentication on when its head had a token; a driver joins it only with RAY_AUTH_MODE=token
    and the same token (Ray never turns authentication on by itself for an explicit address). Ray wraps
    the refusal in a ConnectionError whose cause names it."""
    text = f"{exc} {exc.__cause__ or ''}"
    if "AuthenticationError" in text or "InvalidAuthToken" in text or "authentication token" in text.lower() \
            or type(exc).__name__ == "AuthenticationError":
        return SweepError(f"cannot join the Ray cluster at {address}: it has token authentication on and this driver "
                          "has no token or the wrong one; set RAY_AUTH_MODE=token here, and the head's token: "
                          "RAY_AUTH_TOKEN=<token>, or the head's ~/.ray/auth_token copied to this machine (or "
                          "RAY_AUTH_TOKEN_PATH naming the copy); `ray get-auth-token` on the head prints it")
    return SweepError(f"cannot join the Ray cluster at {address} ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''}); check the address and that "
                      "`ray status` works there")


def preload_modules(spec: SweepSpec) -> tuple[str, ...]:
    """What a local Ray's workers should import for this sweep: the trial code, and torch as well when
    every worker Ray starts with it (one per CPU) will train a trial of its own. A worker that imported
    torch and then idles holds ~270 MB for nothing; a packed sweep's trials never import torch."""
    import torch

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        local = plan(spec, {"CPU": float(cpus), "GPU": float(torch.cuda.device_count())})
    except SweepError:  # plan() says why once Ray is up
        return TRIAL_CODE
    every_worker_trains = local.execution == "trial" and local.max_concurrent >= cpus and spec.simulate is None
    return TRIAL_CODE + TORCH if every_worker_trains else TRIAL_CODE


@contextlib.contextmanager
def idle_workers_for_trials():
    """Let Tune's trial actors start on the worker processes Ray has already started (and preloaded).

    Tune gives every trainable a runtime_env setting PL_DISABLE_FORK (for PyTorch Lightning, which no
    aesweep trial runs), and Ray never hands a worker started without that runtime_env to an actor that
    has one: each trial actor would wait for a fresh process and pay the imports above again.
    Without the variable Tune's runtime_env is empty (unless Tune finds AWS credentials in the driver's
    environment, which it passes on the same way: then trials start on fresh workers).
    Restored afterwards for other Tune runs in this process.
    """
    try:
        from ray.tune.execution import class_cache

        defaults = class_cache.DEFAULT_ENV_VARS
    except (ImportError, AttributeError):  # a Ray without it: nothing to undo
        yield
        return
    saved = dict(defaults)
    defaults.pop("PL_DISABLE_FORK", None)
    try:
        yield
    finally:
        defaults.clear()
        defaults.update(saved)


def trainable(spec: SweepSpec, plan: Plan, dataset, finished: Optional[dict[str, Optional[dict]]] = None,
              slot: Optional[dict[str, float]] = None):
    """The Tune trainable; `dataset` (read once here) reaches every worker through Ray's object store.

    `finished`: the trials that ended after Ray's last snapshot of a restored experiment
    (sweep.experiment.restart_ends). Ray restarts them as unfinished; each returns at once, and Tune ends
    it with the last result it had (sweep.trial.ended_before). `slot`: what a packed trial takes from its
    driver's pool besides its CPU share (proxy_slot)."""
    from ray import tune

    base = {**spec.train, "dataset": spec.dataset, "data_dir": spec.data_dir}
    if plan.execution == "packed":
        from .packed import make_packed_trainable

        return make_packed_trainable(spec, plan, base, finished, slot)
    from .trial import Reporting, SharedDataset, run_trial

    if spec.simulate is not None:
        fn = tune.with_parameters(run_trial, base=base, simulate=dataclasses.asdict(spec.simulate),
                                  reporting=Reporting.of(spec), finished=finished)
        return tune.with_resources(fn, {"cpu": plan.cpu_per_trial, "gpu": plan.gpu_per_trial})
    fn = tune.with_parameters(run_trial, base=base, threads=plan.threads_per_trial, dataset=SharedDataset(dataset),
                              reporting=Reporting.of(spec), finished=finished)
    return tune.with_resources(fn, {"cpu": plan.cpu_per_trial, "gpu": plan.gpu_per_trial})


def make_tuner(spec: SweepSpec, plan: Plan, home: Path, dataset, driver: int = 0):
    """The Tuner of one driver of the sweep (the only one, unless `spec.drivers` > 1: then its share of
    the trials and of the concurrency, in its own experiment folder)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from .packed import OpenPacks, trainer_names
    from .progress import Progress
    from .searcher import StudySearch
    from .space import SearchSpace
    from .tblogs import TensorBoardLogs
    from .tracking import callbacks as tracking_callbacks

    num_samples, concurrent = driver_share(spec, plan, driver)
    spare = spare_trials(concurrent) if plan.execution == "packed" else 0
    remote = results_mod.remote_home(spec)
    # num_samples: the searcher ends the sweep at that many trials by the study's count, which a resumed
    # sweep's Ray counter can lag; max_concurrent_trials below (with the spare trials that keep the
    # proxies' actors in use) reaches it through set_max_concurrency.
    searcher = StudySearch(SearchSpace(spec.space), spec.searcher, study_url(study_path(home)), spec.name,
                           spec.epochs, spec.points if driver == 0 else (), num_samples=num_samples,
                           driver=driver, drivers=spec.all_drivers,
                           mirror=storage.join(remote, study_path(home).name) if remote else None)
    progress = Progress(num_samples, spec.epochs, others=searcher.others if spec.all_drivers > 1 else None,
                        sweep_samples=spec.num_samples)
    scheduler = ASHAScheduler(time_attr="epoch", metric="val_loss", mode="min", max_t=spec.epochs,
                              grace_period=spec.scheduler.grace_period,
                              reduction_factor=spec.scheduler.reduction_factor, brackets=spec.scheduler.brackets)
    # Tune snapshots the whole experiment (every trial's state, a cost that grows with the sweep) as soon as
    # a trial has written num_to_keep checkpoints since the last snapshot, so that no snapshot names a
    # checkpoint it has deleted. Keeping one more than a trial writes at its reports, a trial that reports
    # only at its rungs forces none, and the snapshots follow Tune's period instead of the trials' ends.
    keep = max(2, len(spec.report_epochs or ()) + 1)
    return tune.Tuner(
        trainable(spec, plan, dataset, slot=proxy_slot(spec, plan, driver)),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=num_samples,
                                    max_concurrent_trials=concurrent + spare, reuse_actors=True),
        run_config=tune.RunConfig(
            name=experiment_name(driver), storage_path=remote or str(home),
            storage_filesystem=storage.ray_filesystem(remote), verbose=0,
            callbacks=[progress, TensorBoardLogs(), *tracking_callbacks(spec, home),
                       *([OpenPacks(trainer_names(spec, plan), concurrent, first_wave(spec, plan, driver))]
                         if plan.execution == "packed" else [])],
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep),
        ),
    )


def driver_share(spec: SweepSpec, plan: Plan, driver: int) -> tuple[int, int]:
    """Driver `driver`'s trials and trials at once: its share of the sweep's, or an extension's own."""
    from .drivers import share

    if driver < spec.drivers:
        return (share(spec.base_samples, spec.drivers, driver),
                max(1, share(plan.max_concurrent, spec.drivers, driver)))
    # an extension (`sweep extend`) runs alone, after the drivers before it have ended
    num_samples = spec.extensions[driver - spec.drivers]
    return num_samples, max(1, min(plan.max_concurrent, num_samples))


def proxy_slot(spec: SweepSpec, plan: Plan, driver: int) -> dict[str, float]:
    """What each proxy of driver `driver` takes from the driver's pool (sweep.plan.driver_pools), where the
    cluster has one: nothing for one driver, an extension (it runs alone) or trial execution."""
    import ray

    if plan.execution != "packed" or spec.drivers == 1 or driver >= spec.drivers:
        return {}
    slot = driver_slot(driver, driver_share(spec, plan, driver)[1])
    return slot if set(slot) <= set(ray.cluster_resources()) else {}


def first_wave(spec: SweepSpec, plan: Plan, driver: int) -> int:
    """How many trials the sweep's first wave holds, for OpenPacks: every driver's, as the trainers are shared."""
    return plan.max_concurrent if driver < spec.drivers else driver_share(spec, plan, driver)[1]


# ---- running ----------------------------------------------------------------------------------

def write_spec(spec: SweepSpec, home: Path, plan: Plan, argv: list[str]) -> None:
    meta = {"created": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(argv),
            "commit": _git_commit(), "python": sys.version.split()[0], "execution": plan.execution}
    text = yaml.safe_dump({"sweep": spec.to_dict(), "meta": meta}, sort_keys=False)
    results_mod.write_file(home / SPEC_FILE, lambda path: Path(path).write_text(text))


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run(spec: SweepSpec, *, overwrite: bool = False, address: Optional[str] = None,
        argv: Optional[list[str]] = None) -> Results:
    """Run a new sweep to the end and write its tables."""
    home, dataset = prepare(spec, overwrite)
    tracking.check(spec)
    warm = None
    if spec.warm_start is not None:  # read and checked before anything is written
        from .warmstart import warm_trials

        warm = warm_trials(spec)
    with claim(home):
        if not overwrite:  # another driver may have taken the name since prepare()
            _refuse_taken(spec, home)
        with ray_for_sweep(address or spec.address, spec) as received:
            sweep_plan = plan(spec)
            if received:
                raise Interrupted(received[0], f"stopped by {signal_name(received)} before the sweep started; "
                                               "nothing was written")
            if home.exists():  # --overwrite: only now that every check has passed
                shutil.rmtree(home)
            if results_mod.remote_home(spec):
                storage.delete(results_mod.remote_home(spec))
            home.mkdir(parents=True)
            write_spec(spec, home, sweep_plan, argv or sys.argv)
            if warm is not None:  # before the first driver's searcher opens the study and builds its TPE
                from .warmstart import seed_study

                seed_study(home, spec, warm[1])
                print(f"warm start: the study starts with {len(warm[1])} trial(s) of sweep {warm[0]} "
                      f"({home / 'warm_start.parquet'})", flush=True)
            results_mod.sync_up(home, spec, (SPEC_FILE,))
            _describe(spec, sweep_plan, home)
            failed = []
            with status_mod.kept(home, spec):
                with _sweep_services(spec, sweep_plan, home, dataset), idle_workers_for_trials():
                    if not received:
                        tuner = make_tuner(spec, sweep_plan, home, dataset)  # makes the study the other drivers open
                        with other_drivers(spec, home, received) as others:
                            tuner.fit()
                            failed = others.wait()
                return finish(home, spec, received, failed)


@contextlib.contextmanager
def ray_for_sweep(address: Optional[str], spec: SweepSpec):
    """Ray for one sweep command, with SIGINT and SIGTERM stopping the sweep cleanly from the moment Ray
    is up until it is shut down, the tables included: a signal that lands as fit() returns still gets
    the tables written and the exit that names it. The handlers go in after ray.init, which installs
    a SIGTERM handler of its own."""
    started = connect(address, spec.dashboard, spec)
    try:
        with stop_cleanly_on_signals() as received:
            try:
                yield received
            finally:
                started = _disconnect(started)
    finally:
        _disconnect(started)  # when the handlers could not go in (not the main thread)


def signal_name(received: list[int]) -> str:
    import signal

    return signal.Signals(received[0]).name


@contextlib.contextmanager
def stop_cleanly_on_signals():
    """SIGINT (Ctrl-C) or SIGTERM: stop the sweep as Tune stops on SIGUSR1 (trials checkpointed, the
    experiment saved), then write the tables; a second signal stops at once. Yields a list that holds
    the signal's number once one came, so `finish` can report how the sweep ended.

    Tune's own SIGINT handler would end fit() as if the sweep were done (exit 0, "done"), and SIGTERM
    has none: Python's default kills the driver mid-write.
    """
    import signal

    received: list[int] = []

    def stop(signum, frame):
        if received:
            raise Interrupted(signum, f"stopped at once by a second {signal.Signals(signum).name}; the study and "
                                      "Ray's last snapshot are kept")
        received.append(signum)
        print(f"\n{signal.Signals(signum).name}: stopping the sweep (trials are checkpointed, then the tables "
              "written); send it again to stop at once", file=sys.stderr, flush=True)
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if callable(tune_stop):
            tune_stop(signal.SIGUSR1, frame)

    saved_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    saved = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if saved_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = saved_env


def check_consistent(home: Path, spec: SweepSpec) -> dict[str, str]:
    """Refuse a resume that would lose finished trials: every trial that Ray's snapshot or the tables
    list as finished must be in the study, which is written as each trial ends and so is never behind
    them unless it was damaged. (Ray would otherwise fail to restore its searcher and silently start a
    fresh experiment over the sweep, ray#30861.) Changes nothing; returns the study's finished trials."""
    path = study_path(home)
    try:
        in_study = finished_in_study(study_url(path), spec.name)
    except Exception as exc:  # a journal that cannot be replayed: ValueError, KeyError, OSError, ...
        raise SweepError(f"the study {path} cannot be read ({storage_error(exc)}); resuming would lose its trials, "
                         f"so it is refused; restore the file from a copy (Ray's, as of its last snapshot: "
                         f"{home / EXPERIMENT_DIR / snapshot_name(study_url(path))}) or rerun with --overwrite") from None
    per_driver = [read_experiment(e) for e in experiment_dirs(home, spec)]
    records = [record for found in per_driver for record in found]
    listed = {r["trial_id"]: "Ray's snapshot" for r in records if r["ray_status"] in ("TERMINATED", "ERROR")}
    listed.update({trial_id: "the tables" for trial_id in results_mod.finished_in_tables(home)})
    missing = sorted(set(listed) - set(in_study))
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise SweepError(f"the study {path} lacks {len(missing)} finished trial(s) that {listed[missing[0]]} "
                         f"lists ({shown}): it is damaged or older than them, and resuming would lose them, so it "
                         "is refused; restore the study from a copy or rerun with --overwrite")
    return in_study


def resume(name_or_dir: str, *, address: Optional[str] = None) -> Results:
    """Finish an interrupted sweep: finished trials kept, unfinished ones continued from their checkpoints."""
    from .progress import RESUMED_TRIALS_ENV

    home = results_mod.find_home(name_or_dir)
    spec = results_mod.read_spec(home)
    check_writable(home)
    tracking.check(spec)
    with claim(home, f"wait for it to end, or `sweep stop {home.name}` ends it cleanly"):
        results_mod.sync_down(home, spec)
        check_resumable(home)
        for driver in range(1, spec.all_drivers):  # one that never started its experiment starts it now
            if can_continue(home / experiment_name(driver)):
                check_resumable(home, driver)
        finished = check_consistent(home, spec)
        repair_journal(study_path(home))  # before any driver opens it: drivers sharing it cut nothing
        os.environ[STUDY_URL_ENV] = study_url(study_path(home))  # the study is here now, wherever it was
        try:
            with ray_for_sweep(address or spec.address, spec) as received:
                sweep_plan = plan(spec)
                print(f"resuming sweep {spec.name} in {home}", flush=True)
                dataset = None if spec.simulate is not None else load_dataset(spec.dataset, spec.data_dir)
                failed = []
                with status_mod.kept(home, spec):
                    with _sweep_services(spec, sweep_plan, home, dataset), idle_workers_for_trials():
                        if not received:
                            tuner = driver_tuner(spec, sweep_plan, home, dataset, finished=finished)
                            with other_drivers(spec, home, received) as others:
                                tuner.fit()
                                failed = others.wait()
                        for driver in range(spec.drivers, spec.all_drivers):  # an extension stopped mid-way
                            if received or failed:
                                break
                            fit_extension(spec, sweep_plan, home, dataset, driver)
                    return finish(home, spec, received, failed)
        finally:
            os.environ.pop(STUDY_URL_ENV, None)
            os.environ.pop(RESUMED_TRIALS_ENV, None)  # set by driver_tuner


def driver_tuner(spec: SweepSpec, sweep_plan: Plan, home: Path, dataset, driver: int = 0,
                 finished: Optional[dict[str, str]] = None):
    """The Tuner of driver `driver`: its experiment restored when it started before (finished trials kept,
    unfinished ones continued from their checkpoints), else a new one. The progress line learns from
    RESUMED_TRIALS_ENV how many trials Ray restores, so that it counts them as done and not as new.
    `finished`: the study's finished trials, where the caller has just read them."""
    from ray import tune

    from .progress import RESUMED_TRIALS_ENV

    experiment = home / experiment_name(driver)
    if not can_continue(experiment):
        os.environ[RESUMED_TRIALS_ENV] = "0"
        return make_tuner(spec, sweep_plan, home, dataset, driver)
    restored = read_experiment(experiment)
    os.environ[RESUMED_TRIALS_ENV] = str(len(restored))
    # The study is written as each trial ends, Ray's snapshot every few seconds: what the study saw end
    # is not trained again.
    if finished is None:
        finished = finished_in_study(study_url(study_path(home)), spec.name)
    remote = results_mod.remote_home(spec)
    return tune.Tuner.restore(experiment_path(home, remote, driver),
                              trainable=trainable(spec, sweep_plan, dataset, restart_ends(restored, finished),
                                                  proxy_slot(spec, sweep_plan, driver)),
                              resume_unfinished=True, resume_errored=False,
                              storage_filesystem=storage.ray_filesystem(remote))


def fit_extension(spec: SweepSpec, sweep_plan: Plan, home: Path, dataset, driver: int) -> None:
    """Run extension `driver` (`sweep extend`) in this process to its end: its experiment resumed when it
    started before, else a new one. Extensions run one after another, after the sweep's first drivers."""
    driver_tuner(spec, sweep_plan, home, dataset, driver).fit()


EXTENDABLE = ("num_samples", "max_concurrent_trials")  # what `sweep extend --set` may change


def extended_spec(spec: SweepSpec, overrides: tuple[str, ...]) -> SweepSpec:
    """The sweep's spec with one more extension: `--set num_samples=N` (the new total, above the current one)
    and optionally max_concurrent_trials; any other key is refused, since the trials already run used it."""
    from .spec import apply_override, parse

    raw = spec.to_dict()
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key not in EXTENDABLE:
            raise SweepError(f"--set {key}: `sweep extend` can only grow num_samples (and change "
                             f"max_concurrent_trials); run a new sweep with `warm_start: {spec.name}` to change {key}")
        apply_override(raw, item)
    grown = raw.get("num_samples")
    if not isinstance(grown, int) or isinstance(grown, bool) or grown <= spec.num_samples:
        raise SweepError(f"sweep {spec.name!r} has num_samples={spec.num_samples}; `sweep extend` needs "
                         f"--set num_samples=N with N > {spec.num_samples} (the new total), got {grown!r}")
    raw["extensions"] = list(spec.extensions) + [grown - spec.num_samples]
    return parse(raw, source="sweep extend")


def extend(name_or_dir: str, overrides: tuple[str, ...], *, address: Optional[str] = None,
           argv: Optional[list[str]] = None) -> Results:
    """Give an ended sweep more trials in the same study (`sweep extend NAME --set num_samples=N`): one more
    Tune experiment (driver `all_drivers`), whose TPE starts from every trial the study holds."""
    home = results_mod.find_home(name_or_dir)
    spec = results_mod.read_spec(home)
    new = extended_spec(spec, tuple(overrides))
    check_writable(home)
    tracking.check(new)
    with claim(home, f"wait for it to end, or `sweep stop {home.name}` ends it cleanly"):
        results_mod.sync_down(home, spec)
        check_consistent(home, spec)
        repair_journal(study_path(home))
        dataset = None if new.simulate is not None else load_dataset(new.dataset, new.data_dir)
        os.environ[STUDY_URL_ENV] = study_url(study_path(home))
        try:
            with ray_for_sweep(address or new.address, new) as received:
                sweep_plan = plan(new)
                if received:
                    raise Interrupted(received[0], f"stopped by {signal_name(received)} before the extension "
                                                   "started; nothing was written")
                _record_extension(home, new, argv or sys.argv)
                results_mod.sync_up(home, new, (SPEC_FILE,))
                print(f"extending sweep {new.name} to {new.num_samples} trials: {new.extensions[-1]} more in "
                      f"{home / experiment_name(new.all_drivers - 1)}", flush=True)
                with status_mod.kept(home, new):
                    with _sweep_services(new, sweep_plan, home, dataset), idle_workers_for_trials():
                        if not received:
                            fit_extension(new, sweep_plan, home, dataset, new.all_drivers - 1)
                    return finish(home, new, received)
        finally:
            os.environ.pop(STUDY_URL_ENV, None)


def _record_extension(home: Path, spec: SweepSpec, argv: list[str]) -> None:
    """sweep.yaml with the extended spec; its meta keeps how the sweep was made and adds the extend command."""
    raw = yaml.safe_load((home / SPEC_FILE).read_text()) or {}
    meta = raw.get("meta") or {}
    meta.setdefault("extended", []).append({"at": datetime.datetime.now().isoformat(timespec="seconds"),
                                            "command": " ".join(argv), "commit": _git_commit()})
    text = yaml.safe_dump({"sweep": spec.to_dict(), "meta": meta}, sort_keys=False)
    results_mod.write_file(home / SPEC_FILE, lambda path: Path(path).write_text(text))


def _sweep_services(spec: SweepSpec, sweep_plan: Plan, home: Path, dataset):
    """Actors a sweep needs while it runs (the packed trainers); nothing for trial execution."""
    if sweep_plan.execution == "packed":
        from .packed import trainers

        return trainers(spec, sweep_plan, home, dataset)
    return contextlib.nullcontext()


def finish(home: Path, spec: SweepSpec, received: Optional[list] = None, failed: list[str] = ()) -> Results:
    """Write the tables; after a stop signal, raise Interrupted with the command that continues; when
    another driver of the sweep failed for good, SweepError the same way."""
    results_mod.sync_down(home, spec)
    found = results_mod.build_tables(home, spec)
    results_mod.write_tables(found)
    counts = found.trials["status"].value_counts().to_dict()
    counted = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials"
    why = f"stopped by {signal_name(received)}" if received else "; ".join(failed) or None
    status_mod.write_final(found, "stopped" if why else "finished", why)
    if received:
        raise Interrupted(received[0], f"stopped by {signal_name(received)}: {counted}; "
                                       f"tables written; `sweep resume {home}` continues it")
    if failed:
        raise SweepError(f"{'; '.join(failed)}: {counted}; tables written; `sweep resume {home}` continues it")
    _summary(found)
    return found


def _disconnect(started: bool) -> bool:
    """Shut down the Ray this command started; False, as there is none left to shut down."""
    if started:
        import ray

        ray.shutdown()
    return False


def _describe(spec: SweepSpec, p: Plan, home: Path) -> None:
    where = f"{p.cluster_cpus:g} CPUs, {p.cluster_gpus:g} GPUs"
    how = (f"{p.execution} execution: {p.cpu_per_trial:g} CPU + {p.gpu_per_trial:g} GPU per trial"
           if p.execution == "trial" else
           f"packed execution: {p.trainers} trainer(s), up to {p.pack_size} trials each")
    print(f"sweep {spec.name}: {spec.num_samples} trials x up to {spec.epochs} epochs over "
          f"{', '.join(n for n, q in spec.space.items() if q.kind != 'fixed')} | {how} | Ray: {where} | "
          f"{f'{spec.drivers} drivers | ' if spec.drivers > 1 else ''}"
          f"results: {home}", flush=True)


def _summary(found: Results) -> None:
    trials = found.trials
    counts = trials["status"].value_counts().to_dict()
    print(f"done: {len(trials)} trials ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}), "
          f"{int(trials['epochs'].sum())} epochs", flush=True)
    row = found.best_row()
    if row is not None:
        params = ", ".join(f"{k}={_fmt(row[k])}" for k in SEARCHED if not _missing(row[k]))
        print(f"best: trial {found.best_trial} val_loss {row['final_val_loss']:.5f} ({params})", flush=True)
    print(f"tables: {found.home}/trials.parquet, epochs.parquet, best_config.yaml", flush=True)


def _missing(value) -> bool:
    import pandas as pd

    return value is None or bool(pd.isna(value))


def _fmt(value):
    return f"{value:.4g}" if isinstance(value, float) else value
