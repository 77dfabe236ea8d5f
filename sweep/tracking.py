"""Every trial logged to a tracking server as well (`tracking:` in a sweep file): one MLflow run or W&B run per
trial, with its parameters, a point per epoch, and how it ended (completed, stopped, diverged, error).

Owns the check made before a sweep starts (the optional package installed, the server answering) and the
Tune callbacks that do the logging. The sweep's tables stay its record: a server that stops answering
mid-sweep costs a warning and the points logged while it was away, never the sweep.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from ray.tune.logger import LoggerCallback
from ray.tune.result import AUTO_RESULT_KEYS

from .errors import SweepError
from .study import trial_status
from .spec import SweepSpec
from .epochs import CARRIED, epoch_rows

PROBE_TIMEOUT_S = 10.0
# Result keys that are bookkeeping, not metrics (Ray's own are AUTO_RESULT_KEYS).
NOT_METRICS = frozenset(AUTO_RESULT_KEYS) | {"epoch", "timestamp", "reported_at", "done", "should_checkpoint", CARRIED}
STATUS_TAG = "status"  # completed | stopped | diverged | error, as in trials.parquet
TRIAL_TAG = "tune_trial_id"  # as in the study's trial attributes and trials.parquet's trial_id
MAX_BATCH_METRICS = 1000  # MLflow's limit per log_batch request
RETRY_AFTER_S = 60.0  # after a failed call, the calls skipped before the server is tried again


# ---- before the sweep --------------------------------------------------------------------------

def check(spec: SweepSpec, create: bool = True) -> None:
    """Refuse, with one line, a sweep whose tracking cannot work: the package missing, the server not
    answering, the experiment deleted, no W&B login for online mode. Makes the MLflow experiment if new
    and `create` (`sweep check` writes nothing)."""
    if spec.tracking.mlflow is not None:
        client = _mlflow_client(spec)
        experiment_id(client, mlflow_experiment(spec), spec.tracking.mlflow.uri, create)
    if spec.tracking.wandb is not None:
        _check_wandb(spec)


def _require(package: str):
    try:
        return importlib.import_module(package)
    except ImportError:
        raise SweepError(f"tracking.{package} needs the {package} package, which is not installed; "
                         f"pip install -e '.[{package}]' (or pip install {package}), or remove tracking.{package}") \
            from None


def _probe(url: str, what: str, fix: str) -> None:
    """Whether anything answers HTTP at `url`: any status will do, an error of the server's is still an answer."""
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise SweepError(f"{what} cannot be reached at {url} ({reason}); {fix}") from None


def mlflow_experiment(spec: SweepSpec) -> str:
    return spec.tracking.mlflow.experiment or spec.name


def _mlflow_client(spec: SweepSpec):
    _require("mlflow")
    from mlflow.tracking import MlflowClient

    uri = spec.tracking.mlflow.uri
    if uri.startswith(("http://", "https://")):
        # MLflow's client retries a refused connection for minutes with backoff: ask once, briefly, first.
        _probe(uri.rstrip("/") + "/health", "the MLflow tracking server (tracking.mlflow.uri)",
               "start it (mlflow server --host ... --port ...) or fix the uri")
    return MlflowClient(tracking_uri=uri)


def experiment_id(client, name: str, uri: str, create: bool = True) -> Optional[str]:
    """The id of MLflow experiment `name`, made if new (None if not `create`); drivers that make it at once
    all get the same one."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.get_experiment_by_name(name)
        if found is None and not create:
            return None
        if found is None:
            try:
                return client.create_experiment(name)
            except MlflowException:  # another driver made it first
                found = client.get_experiment_by_name(name)
                if found is None:
                    raise
    except MlflowException as exc:
        raise SweepError(f"MLflow at {uri} refused experiment {name!r} ({_first_line(exc)}); check the server and "
                         "its credentials (MLFLOW_TRACKING_USERNAME/PASSWORD or _TOKEN)") from None
    if found.lifecycle_stage == "deleted":
        raise SweepError(f"MLflow experiment {name!r} at {uri} is deleted; restore it (mlflow experiments restore "
                         f"--experiment-id {found.experiment_id}) or set tracking.mlflow.experiment to another name")
    return found.experiment_id


def _check_wandb(spec: SweepSpec) -> None:
    wandb = _require("wandb")
    if spec.tracking.wandb.mode == "offline":
        return
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    _probe(base, "the W&B server", "check the network (and WANDB_BASE_URL), or set tracking.wandb.mode: offline "
                                   "and `wandb sync` the runs later")
    try:
        wandb.Api(timeout=int(PROBE_TIMEOUT_S)).viewer
    except Exception as exc:  # no key (UsageError), a wrong one (CommError), ...: wandb has no common base
        raise SweepError(f"W&B at {base} did not accept this machine's login ({_first_line(exc)}); run `wandb "
                         "login` or set WANDB_API_KEY, or set tracking.wandb.mode: offline") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


# ---- during the sweep --------------------------------------------------------------------------

def callbacks(spec: SweepSpec, home: Path) -> list:
    """The Tune callbacks of a driver of the sweep (each driver logs its own trials), none without `tracking`."""
    out = []
    if spec.tracking.mlflow is not None:
        out.append(MlflowRuns(spec))
    if spec.tracking.wandb is not None:
        out.append(wandb_runs(spec, home))
    return out


def trial_params(spec: SweepSpec, config: dict) -> dict:
    """What a trial's run records as its parameters: the trial's complete training settings."""
    params = {**spec.train, "dataset": spec.dataset, **spec.trial_params(config)}
    return {k: v for k, v in params.items() if v is not None}


def metrics(row: dict) -> dict:
    """The numbers of one epoch's row worth a point each (losses, speeds), without Tune's bookkeeping."""
    return {k: float(v) for k, v in row.items()
            if k not in NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)}


class MlflowRuns(LoggerCallback):
    """One MLflow run per trial, through MLflow's client from the Tune driver.

    Not Ray's MLflowLoggerCallback: that one makes an HTTP request per metric per result, on the driver's
    only thread, and logs a result that carries several epochs (sweep.trial.CARRIED) as one point. Here a
    result is one `log_batch`, a point per epoch it stands for, with the epoch as the step. A trial that a
    resumed sweep continues goes on in the run it had (found by its `tune_trial_id` tag).
    """

    def __init__(self, spec: SweepSpec):
        self.spec = spec
        self._reset()

    def _reset(self):
        self._client, self._experiment = None, None
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._last: dict[str, dict] = {}  # trial id -> its newest epoch row
        self._down_until, self._failures = 0.0, 0

    def __getstate__(self):  # Ray pickles callbacks with the tuner: keep only the settings
        return {"spec": self.spec}

    def __setstate__(self, state):
        self.spec = state["spec"]
        self._reset()

    def setup(self, *args, **kwargs):
        # Each failed request would otherwise be retried for minutes on the driver's thread, holding up
        # every trial; with these, a server that has gone away costs seconds, then RETRY_AFTER_S of quiet.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(PROBE_TIMEOUT_S)))
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a line per run would break the view
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=self.spec.tracking.mlflow.uri)

    def _call(self, what: str, fn, *args, **kwargs):
        """fn(...), or None when the server failed recently or fails now (a warning, not an error)."""
        if time.monotonic() < self._down_until:
            return None
        try:
            if self._experiment is None:
                self._experiment = experiment_id(self._client, mlflow_experiment(self.spec),
                                                 self.spec.tracking.mlflow.uri)
            return fn(*args, **kwargs)
        except Exception as exc:
            self._failures += 1
            self._down_until = time.monotonic() + RETRY_AFTER_S
            print(f"warning: MLflow at {self.spec.tracking.mlflow.uri} failed to {what} ({_first_line(exc)}); "
                  f"the sweep goes on, and its tables keep every epoch; MLflow is tried again in "
                  f"{RETRY_AFTER_S:.0f} s", file=sys.stderr, flush=True)
            return None

    def _run_of(self, trial) -> Optional[str]:
        if trial.trial_id not in self._runs:
            run_id = self._call("start a run", self._open_run, trial)
            if run_id is not None:
                self._runs[trial.trial_id] = run_id
        return self._runs.get(trial.trial_id)

    def _open_run(self, trial) -> str:
        from mlflow.entities import Param

        client = self._client
        found = client.search_runs([self._experiment], f"tags.{TRIAL_TAG} = '{trial.trial_id}'", max_results=1)
        if found:
            client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
        tags = {TRIAL_TAG: trial.trial_id, "sweep": self.spec.name, "trial_name": str(trial)}
        run = client.create_run(self._experiment, tags=tags, run_name=str(trial))
        params = [Param(k, str(v)) for k, v in trial_params(self.spec, trial.config).items()]
        client.log_batch(run.info.run_id, params=params)
        return run.info.run_id

    def log_trial_start(self, trial):
        self._run_of(trial)

    def log_trial_result(self, iteration, trial, result):
        from mlflow.entities import Metric

        rows = epoch_rows(result)
        self._last[trial.trial_id] = rows[-1]
        run_id = self._run_of(trial)
        if run_id is None:
            return
        now = int(time.time() * 1000)
        points = [Metric(key, value, int(row["timestamp"] * 1000) if "timestamp" in row else now, int(row["epoch"]))
                  for row in rows if "epoch" in row for key, value in metrics(row).items()]
        for start in range(0, len(points), MAX_BATCH_METRICS):
            self._call("log metrics", self._client.log_batch, run_id, metrics=points[start:start + MAX_BATCH_METRICS])

    def log_trial_end(self, trial, failed: bool = False):
        run_id = self._run_of(trial)
        if run_id is None:
            return
        last = self._last.pop(trial.trial_id, None) or trial.last_result
        status = trial_status(last, failed, self.spec.epochs).value
        self._call("end a run", self._end, run_id, status, failed)
        self._runs.pop(trial.trial_id, None)

    def _end(self, run_id: str, status: str, failed: bool) -> None:
        self._client.set_tag(run_id, STATUS_TAG, status)
        self._client.set_terminated(run_id, "FAILED" if failed else "FINISHED")


class WandbRuns(LoggerCallback):
    """One W&B run per trial, through wandb's client on a thread of the Tune driver (W&B runs several runs
    from one process, and its calls wait on its service: the thread keeps them off Tune's loop).

    Not Ray's WandbLoggerCallback: that one logs each run from two Ray actors started for the trial on the
    driver's node, two processes per trial that each import Ray and wandb (BENCHMARKS.md, tracking), and it
    steps by Tune's results, not by epochs. Here each epoch is a step, and the trial's status is in the
    run's config and summary. The run's id is the trial's.
    """

    FINISH_TIMEOUT_S = 120.0  # at the sweep's end, how long the runs may take to be written out

    def __init__(self, spec: SweepSpec, folder: Path):
        self.spec, self.folder = spec, str(folder)
        self._reset()

    def _reset(self):
        self._queue, self._thread = None, None
        self._newest: dict[str, dict] = {}  # trial id -> its newest epoch row
        self._failures = 0

    def __getstate__(self):  # Ray pickles callbacks with the tuner: keep only the settings
        return {"spec": self.spec, "folder": self.folder}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    def setup(self, *args, **kwargs):
        import queue
        import threading

        self._queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="wandb-runs", daemon=True)
        self._thread.start()

    def log_trial_start(self, trial):
        self._queue.put(("start", trial.trial_id, (str(trial), trial_params(self.spec, trial.config))))

    def log_trial_result(self, iteration, trial, result):
        rows = epoch_rows(result)
        self._newest[trial.trial_id] = rows[-1]
        points = [(int(row["epoch"]), metrics(row)) for row in rows if "epoch" in row]
        self._queue.put(("log", trial.trial_id, (str(trial), trial_params(self.spec, trial.config), points)))

    def log_trial_end(self, trial, failed: bool = False):
        # The word itself: wandb writes an Enum member in the run's config by its name (COMPLETED), not its value.
        last = self._newest.pop(trial.trial_id, None) or trial.last_result
        status = trial_status(last, failed, self.spec.epochs).value
        self._queue.put(("end", trial.trial_id, (str(trial), trial_params(self.spec, trial.config), status, failed)))

    def on_experiment_end(self, trials, **info):
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(self.FINISH_TIMEOUT_S)

    def _work(self) -> None:
        import wandb

        settings, runs = self.spec.tracking.wandb, {}

        def run_of(trial_id: str, name: str, params: dict):
            if trial_id not in runs:
                runs[trial_id] = wandb.init(
                    project=settings.project or self.spec.name, entity=settings.entity, mode=settings.mode,
                    dir=self.folder, id=trial_id, name=name, group=self.spec.name, config=params,
                    reinit="create_new", resume="allow", settings=wandb.Settings(console="off", silent=True))
            return runs[trial_id]

        while (item := self._queue.get()) is not None:
            what, trial_id, payload = item
            try:
                run = run_of(trial_id, *payload[:2])
                if what == "log":
                    for epoch, values in payload[2]:
                        run.log(values, step=epoch)
                elif what == "end":
                    status, failed = payload[2:]
                    run.config.update({STATUS_TAG: status}, allow_val_change=True)
                    run.summary[STATUS_TAG] = status
                    runs.pop(trial_id).finish(exit_code=1 if failed else 0)
            except Exception as exc:
                self._failures += 1
                if self._failures == 1:
                    print(f"warning: W&B failed to {what} the run of trial {trial_id} ({_first_line(exc)}); the "
                          "sweep goes on, and its tables keep every epoch", file=sys.stderr, flush=True)
        for run in runs.values():  # trials the sweep left unfinished (a stop): `sweep resume` goes on with them
            with contextlib.suppress(Exception):
                run.finish()


def wandb_runs(spec: SweepSpec, home: Path) -> WandbRuns:
    folder = Path(spec.tracking.wandb.dir or home).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    return WandbRuns(spec, folder)
