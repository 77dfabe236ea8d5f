"""Compute telemetry without Ray: the per-sweep summary on hand-built tables, the live totals of `sweep status`,
a trial's per-epoch clock, and a trial row's sums."""
import math

import pandas as pd
import pytest

from sweep.results import _compute
from sweep.telemetry import LiveTotals, added, describe, status_line, summarise, table_totals
from sweep.trial import ComputeClock

# Two GPU trials packed on one trainer, one CPU trial; times in seconds from 1000.
TRIALS = pd.DataFrame([
    {"trial_id": "a", "device": "cuda:0", "status": "completed", "epochs": 2, "final_val_loss": 0.10,
     "cpu_s": 3.0, "device_s": 2.0, "wait_s": 1.0},
    {"trial_id": "b", "device": "cuda:0", "status": "stopped", "epochs": 1, "final_val_loss": 0.30,
     "cpu_s": 1.0, "device_s": 1.0, "wait_s": 2.0},
    {"trial_id": "c", "device": "cpu", "status": "completed", "epochs": 2, "final_val_loss": 0.20,
     "cpu_s": 8.0, "device_s": 8.0, "wait_s": 0.0},
])
EPOCHS = pd.DataFrame([
    # trainer t0 runs rounds 1000-1002 (a, b) and 1004-1005 (a): busy 3 s of 5 s
    {"trial_id": "a", "epoch": 1, "val_loss": 0.2, "timestamp": 1002.0, "pack_size": 2, "cpu_s": 1.5, "device_s": 1.0,
     "trainer": "t0"},
    {"trial_id": "b", "epoch": 1, "val_loss": 0.3, "timestamp": 1002.0, "pack_size": 2, "cpu_s": 1.0, "device_s": 1.0,
     "trainer": "t0"},
    {"trial_id": "a", "epoch": 2, "val_loss": 0.1, "timestamp": 1005.0, "pack_size": 1, "cpu_s": 1.5, "device_s": 1.0,
     "trainer": "t0"},
    # the CPU trial reaches a's final value first, at 1003
    {"trial_id": "c", "epoch": 1, "val_loss": 0.25, "timestamp": 1001.0, "pack_size": 1, "cpu_s": 4.0, "device_s": 4.0,
     "trainer": None},
    {"trial_id": "c", "epoch": 2, "val_loss": 0.09, "timestamp": 1003.0, "pack_size": 1, "cpu_s": 4.0, "device_s": 4.0,
     "trainer": None},
])


def test_sweep_totals_count_gpu_hours_only_for_gpu_epochs():
    summary = summarise(TRIALS, EPOCHS, "a")
    assert summary["cpu_hours"] == pytest.approx(12 / 3600)
    assert summary["device_hours"] == pytest.approx(11 / 3600)
    assert summary["gpu_hours"] == pytest.approx(3 / 3600)
    assert summary["trial_epochs"] == 5
    assert summary["trial_epochs_per_gpu_hour"] == pytest.approx(3 / (3 / 3600))  # the 3 GPU epochs
    assert summary["waited_hours"] == pytest.approx(3 / 3600)


def test_a_packed_trainer_is_busy_for_its_members_device_seconds_over_its_span():
    (trainer,) = summarise(TRIALS, EPOCHS, "a")["trainers"]
    assert trainer["trainer"] == "t0" and trainer["member_epochs"] == 3
    assert trainer["busy_s"] == pytest.approx(3.0)
    assert trainer["wall_s"] == pytest.approx(5.0)  # the first round started 2 x 1 s before 1002
    assert trainer["utilisation"] == pytest.approx(0.6)


def test_a_trainer_busy_all_along_is_at_most_fully_busy():
    from sweep.telemetry import trainer_utilisation

    # Two back-to-back rounds of one member; the second row's timestamp came 1 ms early.
    epochs = pd.DataFrame({"trainer": ["t0", "t0"], "device_s": [1.0, 1.0], "pack_size": [1, 1],
                           "timestamp": [1001.0, 1001.999]})
    (trainer,) = trainer_utilisation(epochs)
    assert trainer["busy_s"] == pytest.approx(2.0) and trainer["utilisation"] == 1.0


def test_compute_to_the_best_stops_where_its_value_was_first_reached_by_any_trial():
    best = summarise(TRIALS, EPOCHS, "a")["to_best"]
    assert best["val_loss"] == 0.10 and best["reached_by"] == "c"  # c's 0.09 at 1003, before a's 0.10 at 1005
    assert best["trial_epochs"] == 4 and best["share_of_trial_epochs"] == pytest.approx(0.8)
    assert best["cpu_hours"] == pytest.approx(10.5 / 3600) and best["gpu_hours"] == pytest.approx(2 / 3600)
    assert summarise(TRIALS, EPOCHS, None)["to_best"] is None


def test_the_summary_reads_as_lines():
    text = "\n".join(describe(summarise(TRIALS, EPOCHS, "a")))
    assert "CPU-hours" in text and "GPU-hours" in text and "trial-epochs per GPU-hour" in text
    assert "trainer t0: busy 60% of 5 s" in text and "(by trial c)" in text


def test_tables_of_an_older_sweep_without_telemetry_say_so():
    old_trials = TRIALS.drop(columns=["cpu_s", "device_s", "wait_s"])
    old_epochs = EPOCHS.drop(columns=["cpu_s", "device_s", "trainer"])
    summary = summarise(old_trials, old_epochs, "a")
    assert summary["cpu_hours"] is None and summary["gpu_hours"] is None and summary["trainers"] == []
    assert describe(summary) == ["compute: not recorded (the sweep's rows carry no telemetry: an older aesweep)"]
    assert table_totals(old_trials.assign(cpu_s=math.nan, device_s=math.nan)) is None


def test_live_totals_count_a_re_reported_epoch_once_and_add_up_across_drivers():
    live = LiveTotals()
    live.add("a", {"epoch": 1, "cpu_s": 1.0, "device_s": 2.0, "device": "cuda:0"})
    live.add("a", {"epoch": 1, "cpu_s": 1.5, "device_s": 2.5, "device": "cuda:0"})  # restored, trained again
    live.add("c", {"epoch": 1, "cpu_s": 4.0, "device_s": 4.0, "device": "cpu"})
    live.add("c", {"epoch": 2, "val_loss": 0.1})  # no telemetry (an older trial): not counted
    live.ended("c")
    totals = live.totals()
    assert totals == {"cpu_s": 5.5, "device_s": 6.5, "gpu_s": 2.5, "gpu_epochs": 1}
    both = added([totals, None, totals])
    assert both["cpu_s"] == 11.0 and both["gpu_epochs"] == 2
    assert status_line(both) == "compute: 0.0031 CPU-hours, 0.0014 GPU-hours (0.0036 device-hours), " \
                                "1440 trial-epochs per GPU-hour"
    assert table_totals(TRIALS) == {"cpu_s": 12.0, "device_s": 11.0, "gpu_s": 3.0, "gpu_epochs": 3}


def test_an_epochs_wait_is_its_wall_time_less_its_training(monkeypatch):
    now = {"wall": 100.0, "cpu": 10.0}
    monkeypatch.setattr("sweep.trial.time.monotonic", lambda: now["wall"])
    monkeypatch.setattr("sweep.trial.time.process_time", lambda: now["cpu"])
    clock = ComputeClock()
    now.update(wall=103.0, cpu=12.5)
    lap = clock.lap(trained_s=2.0)
    assert lap["cpu_s"] == 2.5 and lap["wait_s"] == 1.0
    now.update(cpu=13.0)  # reporting: not the next epoch's CPU time
    clock.skip()
    now.update(wall=104.0, cpu=14.0)
    lap = clock.lap(trained_s=1.5)  # a clock a little off never gives a negative wait
    assert lap["cpu_s"] == 1.0 and lap["wait_s"] == 0.0


def test_a_trials_row_sums_its_epochs_and_adds_its_time_in_the_queue():
    epochs = pd.DataFrame([{"epoch": 1, "cpu_s": 1.0, "device_s": 0.5, "wait_s": 2.0, "started_at": 1010.0},
                           {"epoch": 2, "cpu_s": 1.0, "device_s": 0.5, "wait_s": 0.5, "started_at": 1020.0}])
    row = _compute(epochs, suggested_at=1004.0)  # proposed at 1004, first started at 1010
    assert row == {"cpu_s": 2.0, "device_s": 1.0, "wait_s": 8.5, "queued_s": 6.0}
    unknown = _compute(epochs, suggested_at=None)  # a trial the study has not recorded as finished
    assert math.isnan(unknown["queued_s"]) and unknown["wait_s"] == 2.5
    old = _compute(pd.DataFrame([{"epoch": 1, "val_loss": 0.1}]), None)
    assert all(math.isnan(v) for v in old.values())
