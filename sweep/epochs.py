"""A trial's epochs as Tune results carry them, and as its checkpoints keep them.

No Ray and no torch: the tables (sweep.results) read these formats without importing either.
"""
from __future__ import annotations

HISTORY_FILE = "history.json"  # in a checkpoint: every epoch of the trial up to it, a JSON list of rows
CARRIED = "carried_epochs"  # a result's earlier epochs since the trial's previous result: a list of rows


def epoch_rows(result: dict) -> list[dict]:
    """Every epoch a Tune result stands for, oldest first: its carried rows, then itself."""
    carried = result.get(CARRIED) or []
    own = {k: v for k, v in result.items() if k != CARRIED}
    return [*carried, own]
