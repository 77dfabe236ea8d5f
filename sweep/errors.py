"""The errors the `sweep` command turns into one line and an exit status, in one place so that every
layer (spec, runner, results) can raise them without importing another's machinery."""
from __future__ import annotations

import signal


class SweepError(RuntimeError):
    """A sweep that cannot start or resume; one line with the fix."""


class ResultsError(RuntimeError):
    """The sweep's folder cannot be read or written; one line with the fix."""


class Interrupted(BaseException):
    """The sweep stopped on SIGINT or SIGTERM after its trials were checkpointed and its tables written.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way out swallows it;
    the command exits 128 + the signal's number, as a shell reports a process a signal ended.
    """

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name
