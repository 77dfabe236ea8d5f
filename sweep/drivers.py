"""A sweep of several Tune drivers (`drivers: N`): the other drivers, each a process of its own.

Driver k (k >= 1) runs one Tune experiment (ray-<k>/ in the sweep's folder) over its share of the trials
with its own ASHA, on the Ray cluster the first driver (the `sweep` command) joined, and shares the
sweep's study (sweep.searcher). The first driver starts them, passes stop signals on, starts again one
that dies (it resumes its experiment), and waits for them before it writes the tables. Each runs
sweep.driver, which is not a command for users.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

DRIVER_LOG = "driver-{}.log"  # in the sweep's folder: what driver k printed


def share(total: int, drivers: int, driver: int) -> int:
    """Driver `driver`'s part of `total` (trials, or trials at once): as even as whole numbers allow."""
    return total // drivers + (1 if driver < total % drivers else 0)


class OtherDrivers:
    """Drivers 1..N-1 of a sweep, as processes: started, watched, signalled, waited for."""

    POLL_S = 0.5

    def __init__(self, home: Path, drivers: int, address: str, max_failures: int, received: list[int]):
        self.home, self.address, self.max_failures, self.received = home, address, max_failures, received
        self.procs: dict[int, subprocess.Popen] = {}
        self.failures = {k: 0 for k in range(1, drivers)}
        self.failed: dict[int, str] = {}  # driver -> why it is not running any more, when it ended badly
        self.forwarded = 0  # stop signals passed on so far
        self._done = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="sweep-drivers", daemon=True)

    def start(self) -> None:
        for driver in self.failures:
            self._spawn(driver)
        self._watcher.start()

    def _spawn(self, driver: int) -> None:
        log = open(self.home / DRIVER_LOG.format(driver), "ab")
        with log:
            self.procs[driver] = subprocess.Popen(
                [sys.executable, "-m", "sweep.driver", str(self.home), str(driver), self.address],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=os.environ.copy(),
                start_new_session=True)  # a Ctrl-C in the terminal reaches them through the first driver

    def _watch(self) -> None:
        """Pass stop signals on; start a driver that died again while it has failures left."""
        while not self._done.wait(self.POLL_S):
            self._forward()
            for driver, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None or code == 0 or driver in self.failed:
                    continue
                if self.received or self.failures[driver] >= self.max_failures:
                    self.failed[driver] = (f"driver {driver} ended with exit status {code} (its log: "
                                           f"{self.home / DRIVER_LOG.format(driver)})")
                    continue
                self.failures[driver] += 1
                print(f"driver {driver} ended with exit status {code}; starting it again "
                      f"({self.failures[driver]} of {self.max_failures}; its log: "
                      f"{self.home / DRIVER_LOG.format(driver)})", file=sys.stderr, flush=True)
                self._spawn(driver)

    def _forward(self) -> None:
        while self.forwarded < len(self.received):
            signum = self.received[self.forwarded]
            self.forwarded += 1
            for proc in self.procs.values():
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)

    def wait(self) -> list[str]:
        """Wait for every driver to end; what went wrong with those that did not end well."""
        while any(p.poll() is None for p in self.procs.values()) or self._restarting():
            time.sleep(self.POLL_S)
        self._done.set()
        self._watcher.join()
        return [self.failed[k] for k in sorted(self.failed)]

    def _restarting(self) -> bool:
        """A driver that died and is still to be started again (the watcher is between its polls)."""
        return any(p.returncode not in (0, None) and k not in self.failed for k, p in self.procs.items())

    def stop(self) -> None:
        """The first driver is ending early (an error, a second signal): stop the others at once."""
        self._done.set()
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            if proc.poll() is None:
                proc.kill()


class _NoOthers:
    def wait(self) -> list[str]:
        return []


@contextlib.contextmanager
def other_drivers(spec, home: Path, received: list[int]):
    """The sweep's other drivers, started once the first driver's Tuner (and so the study) exists;
    nothing when the sweep has one driver."""
    if spec.drivers == 1:
        yield _NoOthers()
        return
    import ray

    others = OtherDrivers(home, spec.drivers, ray.get_runtime_context().gcs_address, spec.max_failures, received)
    others.start()
    try:
        yield others
    except BaseException:
        others.stop()
        raise
