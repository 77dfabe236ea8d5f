"""One of the other drivers of a sweep of several (`drivers: N`, sweep.drivers starts them):
`python -m sweep.driver HOME K ADDRESS` runs driver K's Tune experiment, new or resumed, on the Ray
cluster at ADDRESS. Not a command for users.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from filelock import FileLock

from aemodels import load_dataset

from . import results as results_mod
from . import runner
from . import status as status_mod
from .experiment import can_continue, check_resumable, experiment_name
from .searcher import STUDY_URL_ENV
from .study import study_path, study_url


def run_driver(home: Path, driver: int, address: str) -> None:
    """Driver `driver` of the sweep in `home`: its experiment, new, or resumed from its folder."""
    spec = results_mod.read_spec(home)
    os.environ[STUDY_URL_ENV] = study_url(study_path(home))
    experiment = home / experiment_name(driver)
    with FileLock(str(runner.driver_lock(home, driver))), runner.ray_for_sweep(address, spec) as received:
        _stop_with_first_driver()
        plan = runner.plan(spec)
        trains_here = plan.execution == "trial" and spec.simulate is None  # packed: the trainers hold the data
        dataset = load_dataset(spec.dataset, spec.data_dir) if trains_here else None
        with runner.idle_workers_for_trials(), status_mod.kept(home, spec, driver):
            if received:
                return
            if can_continue(experiment):  # started again after it died, or `sweep resume`
                check_resumable(home, driver)
            runner.driver_tuner(spec, plan, home, dataset, driver).fit()
    if received:
        raise SystemExit(128 + received[0])


STOP_GRACE_S = 30.0  # how long a driver whose first driver died may take to stop cleanly


def _stop_with_first_driver() -> None:
    """Stop this driver cleanly (as on SIGTERM) if the first driver dies, and at once if it cannot: a local
    Ray dies with the first driver, and a clean stop may then wait on it for good. Until this driver has
    ended, its lock keeps a `sweep resume` from running its experiment a second time beside it."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(STOP_GRACE_S)
        os.kill(os.getpid(), signal.SIGKILL)  # as a crash would: `sweep resume` continues from its checkpoints

    threading.Thread(target=watch, name="first-driver", daemon=True).start()


def main(argv: Optional[list[str]] = None) -> int:
    home, driver, address = (argv or sys.argv[1:])[:3]
    run_driver(Path(home), int(driver), address)
    return 0


if __name__ == "__main__":
    sys.exit(main())
