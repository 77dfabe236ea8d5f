"""What a sweep's compute cost, from its tables: CPU- and device-hours, packed trainers' utilisation, trial-epochs
per GPU-hour, and the compute spent until the best result was first reached.

It owns the per-sweep summary and its text; the per-epoch figures it adds up are measured where the trials
train (sweep.trial.ComputeClock, sweep.packed.PackTrainer) and reach the tables with the rest of each row.
"""
from __future__ import annotations

import math
from typing import Optional

import pandas as pd


def _column(table: pd.DataFrame, name: str) -> pd.Series:
    """A numeric column, all NaN when the table has none (tables from an older aesweep)."""
    if name not in table:
        return pd.Series(math.nan, index=table.index, dtype=float)
    return pd.to_numeric(table[name], errors="coerce").astype(float)


def _hours(values: pd.Series) -> Optional[float]:
    return None if values.isna().all() else float(values.sum()) / 3600


def on_gpu(devices: pd.Series) -> pd.Series:
    """Which rows ran on a GPU: `cuda`, or `cuda:N` for a packed trainer's device."""
    return devices.astype("string").str.startswith("cuda").fillna(False).astype(bool)


def summarise(trials: pd.DataFrame, epochs: pd.DataFrame, best_trial: Optional[str] = None) -> dict:
    """The sweep's compute, from its trials and epochs tables (`best_trial`: the one `to_best` counts up to).

    None stands for a figure the tables cannot give: no telemetry in them (an older sweep), no GPU epoch for
    the per-GPU-hour rate, no best trial yet.
    """
    devices = epochs["trial_id"].map(trials.set_index("trial_id")["device"]) if len(trials) else epochs["trial_id"]
    gpu = on_gpu(devices) if len(epochs) else pd.Series(False, index=epochs.index, dtype=bool)
    cpu_s, device_s = _column(epochs, "cpu_s"), _column(epochs, "device_s")
    gpu_hours = _hours(device_s[gpu]) if gpu.any() else 0.0
    device_hours = _hours(device_s)
    summary = {
        "trial_epochs": int(len(epochs)),
        "cpu_hours": _hours(cpu_s),
        "device_hours": device_hours,
        "gpu_hours": gpu_hours if device_hours is not None else None,
        "trial_epochs_per_gpu_hour": int(gpu.sum()) / gpu_hours if gpu_hours else None,
        "trial_epochs_per_device_hour": len(epochs) / device_hours if device_hours else None,
        "waited_hours": _hours(_column(trials, "wait_s")),
        "trainers": trainer_utilisation(epochs),
        "to_best": to_best(trials, epochs, best_trial),
    }
    return summary


def trainer_utilisation(epochs: pd.DataFrame) -> list[dict]:
    """Per packed trainer: its busy seconds (its members' device_s, which add up to its time on their packs),
    its wall seconds from the start of its first round to the end of its last, and the busy share.

    A row's round started `device_s * pack_size` before its timestamp (the pack's time, shared evenly),
    give or take the row's trip to its trial. A sweep resumed after a pause counts the pause as idle.
    """
    if "trainer" not in epochs or not epochs["trainer"].notna().any():
        return []
    rows = epochs[epochs["trainer"].notna()]
    device_s, stamps = _column(rows, "device_s"), _column(rows, "timestamp")
    frame = pd.DataFrame({"trainer": rows["trainer"].to_numpy(), "busy": device_s.to_numpy(),
                          "end": stamps.to_numpy(),
                          "start": (stamps - device_s * _column(rows, "pack_size").fillna(1)).to_numpy()})
    per = frame.groupby("trainer", sort=True).agg(busy=("busy", "sum"), start=("start", "min"), end=("end", "max"),
                                                  member_epochs=("busy", "size"))
    found = []
    for trainer, row in per.iterrows():
        wall = float(row["end"] - row["start"])
        found.append({"trainer": trainer, "busy_s": float(row["busy"]), "wall_s": wall,
                      "member_epochs": int(row["member_epochs"]),
                      # The span is estimated from the rows' timestamps: a trainer busy all along can come out
                      # a few ms short of its busy time, which is still all of it.
                      "utilisation": min(1.0, float(row["busy"]) / wall) if wall > 0 else None})
    return found


def to_best(trials: pd.DataFrame, epochs: pd.DataFrame, best_trial: Optional[str]) -> Optional[dict]:
    """The compute of every epoch that had ended when some trial first reached the best trial's final val_loss
    (or better): what the sweep had to spend to find its result, against what it spent in all."""
    if best_trial is None or not len(epochs) or "timestamp" not in epochs:
        return None
    best = trials.loc[trials["trial_id"] == best_trial, "final_val_loss"]
    if best.empty or not math.isfinite(float(best.iloc[0])):
        return None
    value = float(best.iloc[0])
    loss, stamps = _column(epochs, "val_loss"), _column(epochs, "timestamp")
    reached = stamps[loss <= value]
    if reached.empty or not math.isfinite(reached.min()):
        return None
    spent = epochs[stamps <= reached.min()]
    devices = spent["trial_id"].map(trials.set_index("trial_id")["device"])
    gpu = on_gpu(devices) if len(spent) else pd.Series(False, index=spent.index, dtype=bool)
    device_s = _column(spent, "device_s")
    return {"val_loss": value, "trial_id": best_trial, "reached_by": epochs.loc[reached.idxmin(), "trial_id"],
            "trial_epochs": int(len(spent)), "cpu_hours": _hours(_column(spent, "cpu_s")),
            "device_hours": _hours(device_s), "gpu_hours": _hours(device_s[gpu]) if gpu.any() else 0.0,
            "share_of_trial_epochs": len(spent) / len(epochs)}


def describe(summary: dict) -> list[str]:
    """The summary as a few lines of text, for `sweep analyze`, `sweep status` and the report."""
    if summary.get("cpu_hours") is None and summary.get("device_hours") is None:
        return ["compute: not recorded (the sweep's rows carry no telemetry: an older aesweep)"]
    lines = [f"compute: {_h(summary['cpu_hours'])} CPU-hours, {_h(summary['gpu_hours'])} GPU-hours, "
             f"{_h(summary['device_hours'])} device-hours (GPUs and CPUs), {summary['trial_epochs']} trial-epochs"]
    rates = []
    if summary.get("trial_epochs_per_gpu_hour"):
        rates.append(f"{summary['trial_epochs_per_gpu_hour']:.0f} trial-epochs per GPU-hour")
    if summary.get("trial_epochs_per_device_hour"):
        rates.append(f"{summary['trial_epochs_per_device_hour']:.0f} trial-epochs per device-hour")
    if summary.get("waited_hours") is not None:
        rates.append(f"trials waited {_h(summary['waited_hours'])} h in all")
    if rates:
        lines.append("  " + ", ".join(rates))
    for trainer in summary.get("trainers") or []:
        share = "-" if trainer["utilisation"] is None else f"{100 * trainer['utilisation']:.0f}%"
        lines.append(f"  trainer {trainer['trainer']}: busy {share} of {trainer['wall_s']:.0f} s "
                     f"({trainer['member_epochs']} member-epochs)")
    best = summary.get("to_best")
    if best:
        lines.append(f"  until val_loss {best['val_loss']:.5f} was first reached (by trial {best['reached_by']}): "
                     f"{_h(best['cpu_hours'])} CPU-hours, {_h(best['gpu_hours'])} GPU-hours, "
                     f"{best['trial_epochs']} trial-epochs ({100 * best['share_of_trial_epochs']:.0f}% of them)")
    return lines


def _h(hours: Optional[float]) -> str:
    if hours is None:
        return "-"
    return f"{hours:.3g}" if hours >= 0.01 else f"{hours:.2g}"


# ---- the live figures of `sweep status` -----------------------------------------------------------

class LiveTotals:
    """The compute of the epochs a Tune driver has seen so far, each epoch once (a restored trial reports
    again the epochs since its checkpoint; the last report of an epoch counts, as in the tables). Kept as
    running sums, with the epochs of running trials only: the driver rewrites the status every few seconds,
    and a sweep has many trial-epochs."""

    KEYS = ("cpu_s", "device_s", "gpu_s", "gpu_epochs")

    def __init__(self):
        self.running: dict[str, dict[int, tuple[float, ...]]] = {}
        self.sums = dict.fromkeys(self.KEYS, 0.0)

    def add(self, trial_id: str, row: dict) -> None:
        if "epoch" not in row or ("cpu_s" not in row and "device_s" not in row):
            return
        gpu = str(row.get("device") or "").startswith("cuda")
        device_s = float(row.get("device_s") or 0.0)
        values = (float(row.get("cpu_s") or 0.0), device_s, device_s if gpu else 0.0, 1.0 if gpu else 0.0)
        epochs = self.running.setdefault(trial_id, {})
        old = epochs.get(int(row["epoch"]), (0.0,) * len(self.KEYS))
        epochs[int(row["epoch"])] = values
        for key, new, before in zip(self.KEYS, values, old):
            self.sums[key] += new - before

    def ended(self, trial_id: str) -> None:
        """The trial has ended for good: none of its epochs is reported again."""
        self.running.pop(trial_id, None)

    def totals(self) -> dict:
        return {**self.sums, "gpu_epochs": int(round(self.sums["gpu_epochs"]))}


def table_totals(trials: pd.DataFrame, epochs: Optional[pd.DataFrame] = None) -> Optional[dict]:
    """`LiveTotals.totals` from the tables (a finished sweep's status); None without telemetry in them."""
    cpu_s, device_s = _column(trials, "cpu_s"), _column(trials, "device_s")
    if cpu_s.isna().all() and device_s.isna().all():
        return None
    gpu = on_gpu(trials["device"]) if len(trials) else pd.Series(False, index=trials.index, dtype=bool)
    return {"cpu_s": float(cpu_s.sum()), "device_s": float(device_s.sum()), "gpu_s": float(device_s[gpu].sum()),
            "gpu_epochs": int(pd.to_numeric(trials.loc[gpu, "epochs"], errors="coerce").sum())}


def added(totals: list[Optional[dict]]) -> Optional[dict]:
    """Several drivers' totals as one."""
    known = [t for t in totals if t]
    if not known:
        return None
    return {key: sum(t.get(key, 0) for t in known) for key in ("cpu_s", "device_s", "gpu_s", "gpu_epochs")}


def status_line(totals: dict) -> str:
    line = (f"compute: {_h(totals['cpu_s'] / 3600)} CPU-hours, {_h(totals['gpu_s'] / 3600)} GPU-hours "
            f"({_h(totals['device_s'] / 3600)} device-hours)")
    if totals.get("gpu_s"):
        line += f", {totals['gpu_epochs'] * 3600 / totals['gpu_s']:.0f} trial-epochs per GPU-hour"
    return line
