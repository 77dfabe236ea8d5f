"""How a training run or a sweep's trial stands: one word, the same in results, tables, status.json and the CLI.

Standard library only, so the torch-free side of sweep (tables, `sweep status`) reads the same words.
"""
from __future__ import annotations

import enum


class Status(str, enum.Enum):
    """A `str` enum: each member equals, prints, formats and serialises as its word ("completed", ...)."""

    PENDING = "pending"      # queued by Ray Tune, not started
    RUNNING = "running"
    COMPLETED = "completed"  # trained every epoch it was given
    STOPPED = "stopped"      # ended early on purpose: ASHA, a report callback, or the sweep stopped
    DIVERGED = "diverged"    # a NaN or infinite loss ended it
    ERROR = "error"          # it raised (or its worker died) on its last allowed attempt

    # str's own methods, not Enum's, so f-strings, str() and CSV writers give the word, not `Status.X`.
    __str__ = str.__str__
    __format__ = str.__format__


# How a trial can end, in the order tables and `sweep status` list them.
FINISHED = (Status.COMPLETED, Status.STOPPED, Status.DIVERGED, Status.ERROR)
# A trial whose val_loss counts towards the best: it ran its epochs or was stopped early with a finite loss.
RANKED = (Status.COMPLETED, Status.STOPPED)
