"""benchmarks/: the scripts run end to end on a tiny setting and write the table they print."""
import importlib.util
import re
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(script: str):
    spec = importlib.util.spec_from_file_location(script, BENCHMARKS / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_speed_writes_a_row_per_variant_with_positive_seconds(data_dir, tmp_path):
    out = tmp_path / "nested" / "x.md"
    args = ["--device", "cpu", "--subset", "1024", "--epochs", "1", "--variants", "vanilla", "--out", str(out)]
    assert _load("train_speed").main(args) == 0

    text = out.read_text()
    assert "command: `python benchmarks/train_speed.py --device cpu --subset 1024" in text
    row = re.search(r"^\| vanilla \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \|$", text, re.MULTILINE)
    assert row, text
    seed_s, ours_s, speed_up = map(float, row.groups())
    assert seed_s > 0 and ours_s > 0 and speed_up > 0
    assert "extrapolated" in text  # 1,024 of 60,000 images: the full-epoch figures are labelled as such


def test_pack_speed_writes_a_row_per_variant_and_k(data_dir, tmp_path):
    out = tmp_path / "p.md"
    args = ["--device", "cpu", "--ks", "1,2", "--variants", "vanilla", "--subset", "256", "--out", str(out)]
    assert _load("pack_speed").main(args) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| vanilla |")]
    assert [row.split("|")[2].strip() for row in rows] == ["1", "2"]
    assert all(float(row.split("|")[3]) > 0 for row in rows)


def test_sweep_throughput_itemises_every_idle_slot_second_by_when_it_happens():
    import pandas as pd

    # two slots, wall 0..12 s: trial a runs 1-3 and 3-5, b 2-6, c (the last to start) 7-9 and then
    # alone 9-11 (its second epoch is tail, not "between trials", though it starts after c does)
    rows = pd.DataFrame({"trial_id": ["a", "a", "b", "c", "c"], "reported_at": [3.0, 5.0, 6.0, 9.0, 11.0],
                         "time_this_iter_s": [2.0, 2.0, 4.0, 2.0, 2.0]})
    split = _load("sweep_throughput").idle_split(rows, slots=2, began=0.0, ended=12.0)

    assert split == {"idle_start_s": 2.0, "idle_between_s": 4.0, "idle_tail_s": 4.0, "idle_end_s": 2.0}
    assert sum(split.values()) == 2 * 12.0 - rows["time_this_iter_s"].sum()


def test_sweep_throughput_medians_of_hand_overs_set_ups_and_round_trips():
    import pandas as pd
    import pytest

    # two slots: a (1-3, 3-5) and b (2-6) are the first wave; c starts 0.2 s after a ends, d 0.5 s after b
    rows = pd.DataFrame({"trial_id": ["a", "a", "b", "c", "c", "d"],
                         "reported_at": [3.0, 5.0, 6.0, 7.2, 9.2, 8.5],
                         "time_this_iter_s": [2.0, 2.0, 4.0, 2.0, 2.0, 2.0],
                         "epoch_s": [1.8, 1.9, 3.5, 1.9, 1.7, 1.6]})
    found = _load("sweep_throughput").handovers(rows, slots=2)

    assert found["handover_ms"] == pytest.approx(350)  # median of 200 and 500
    assert found["trial_setup_ms"] == pytest.approx(250)  # c 100, d 400; a and b (first wave) left out
    assert found["round_trip_ms"] == pytest.approx(200)  # second epochs: a 100, c 300


def test_sweep_throughput_times_searcher_calls_and_puts_the_searcher_back():
    import time

    import pytest

    class Searcher:
        def suggest(self, trial_id):
            time.sleep(0.02)
            return {"lr": 0.1}

        def on_trial_result(self, trial_id, result):
            raise ValueError("bookkeeping failed")

        def on_trial_complete(self, trial_id, result=None, error=False):
            return None

    originals = dict(vars(Searcher))
    with _load("sweep_throughput").SearcherTimer(Searcher) as timer:
        assert Searcher().suggest("t1") == {"lr": 0.1}
        Searcher().suggest("t2")
        with pytest.raises(ValueError):
            Searcher().on_trial_result("t1", {})

    assert len(timer.calls["suggest"]) == 2 and len(timer.calls["on_trial_result"]) == 1
    assert timer.summary()["suggest_ms"] >= 20
    assert "on_trial_complete_ms" not in timer.summary()  # never called: no figure rather than a zero
    assert all(vars(Searcher)[name] is originals[name] for name in timer.METHODS)


@pytest.mark.slow
def test_sweep_throughput_measures_a_small_sweep_twice_and_removes_its_folder(data_dir, tmp_path):
    import json
    import os
    import subprocess
    import sys

    scratch, out = tmp_path / "tmp", tmp_path / "t.md"
    scratch.mkdir()
    command = [sys.executable, str(BENCHMARKS / "sweep_throughput.py"), "--device", "cpu", "--modes", "trial",
               "--no-anchors", "--trials", "2", "--epochs", "1", "--subset", "500", "--repeat", "2", "--out", str(out)]
    import tempfile

    env = {**os.environ, "TMPDIR": str(scratch), "RAY_TMPDIR": tempfile.gettempdir()}  # Ray's sockets: short paths
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(out.with_suffix(".json").read_text())["modes"]
    assert [m["run"] for m in runs] == [1, 2]
    for mode in runs:
        assert mode["trials"] == 2 and mode["trial_epochs"] == 2 and 0 < mode["busy"] <= 1
    table = out.read_text()
    assert "| aesweep trial #1 | " in table and "| aesweep trial #2 | " in table
    low, high = sorted(m["busy"] for m in runs)
    assert f"| aesweep trial | 2 | {low:.3f} / {(low + high) / 2:.3f} / {high:.3f} |" in table
    assert not list(scratch.glob("aesweep-throughput-*"))  # its sweep's ~0.6 GB of checkpoints went with it


def test_searcher_scale_writes_the_cost_table_and_the_quality_comparison(tmp_path):
    out = tmp_path / "s.md"
    assert _load("searcher_scale").main(["--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert "command: `python benchmarks/searcher_scale.py --quick" in text
    for label in ("TPE before issue 18", "StudySearch (sweep.tpe)", "random through the study"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {label}"))
        assert all(float(cell) > 0 for cell in row.strip("|").split("|")[1:]), row
    assert "| new at or below old, seeds | " in text and "over 2 seeds" in text


def _gpu_check(tmp_path, *args: str):
    """benchmarks/gpu_check.sh --cpu-smoke with `args`; returns (exit status, {step: summary cells}, the markdown)."""
    import os
    import subprocess
    import sys
    import tempfile

    out = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_PYTHON": sys.executable, "TMPDIR": str(tmp_path),
           "RAY_TMPDIR": tempfile.gettempdir()}  # Ray's sockets want short paths
    proc = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), "--cpu-smoke", "--out", str(out), *args],
                          env=env, capture_output=True, text=True, timeout=600)
    text = (out / "gpu_check.md").read_text()
    assert proc.stdout.endswith(text), "the table is printed"
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[0] in ("train_speed", "pack_speed", "gpu_memory", "sweep_trial", "sweep_packed"):
            rows[cells[0]] = dict(zip(("step", "what", "status", "wall", "figures", "reference"), cells))
    assert list(rows) == ["train_speed", "pack_speed", "gpu_memory", "sweep_trial", "sweep_packed"], text
    assert (out / "gpu_check.log").read_text().strip()
    return proc.returncode, rows, text


def test_gpu_check_smoke_writes_a_row_per_step_and_goes_on_past_a_step_out_of_time(data_dir, tmp_path):
    code, rows, text = _gpu_check(tmp_path, "--only", "train_speed,pack_speed,gpu_memory", "--budget", "pack_speed=1")

    assert code == 1, "a step that ran out of time fails the command, after the table is written"
    assert text.startswith("# GPU check") and "CPU smoke run" in text
    assert rows["train_speed"]["status"] == "ok"
    seed_s, ours_s = map(float, re.search(r"vanilla: seed ([\d.]+) s, aesweep ([\d.]+) s \(", rows["train_speed"]["figures"]).groups())
    assert seed_s > 0 and ours_s > 0
    assert rows["pack_speed"]["status"] == "timed out after 1 s" and rows["pack_speed"]["wall"].endswith("(1)")
    assert rows["gpu_memory"]["status"] == "ok", "the step after the one that ran out of time still ran"
    assert rows["gpu_memory"]["figures"] == "vanilla: alone - MiB, per pack member - MiB"  # no CUDA counter on a CPU
    assert rows["sweep_trial"]["status"] == rows["sweep_packed"]["status"] == "skipped"
    assert "## train_speed" in text and "## gpu_memory" in text and "## pack_speed" not in text


def test_gpu_check_refuses_an_unknown_step(tmp_path):
    import subprocess

    proc = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), "--only", "train_sped", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown step train_sped (known: train_speed, pack_speed" in proc.stderr


@pytest.mark.slow
def test_gpu_check_smoke_runs_the_reference_sweep_packed_and_tables_its_throughput(data_dir, tmp_path):
    code, rows, text = _gpu_check(tmp_path, "--only", "sweep_packed")

    assert code == 0, text
    assert rows["sweep_packed"]["status"] == "ok"
    found = re.match(r"2 trials, (\d+) trial-epochs in [\d.]+ s: ([\d.]+) trial-epochs/min", rows["sweep_packed"]["figures"])
    assert found and int(found.group(1)) == 2 and float(found.group(2)) > 0, rows["sweep_packed"]
    assert (tmp_path / "out" / "sweep_packed.json").is_file()
    assert all(rows[s]["status"] == "skipped" for s in ("train_speed", "pack_speed", "gpu_memory", "sweep_trial"))


def test_scale_protocols_split_sweep_keys_from_environment_variables():
    scale = _load("scale")
    assert scale.parse_protocol("today") == ("today", [], {})
    assert scale.parse_protocol("new:scheduler.report=rungs,TUNE_GLOBAL_CHECKPOINT_S=auto") == \
        ("new", ["scheduler.report=rungs"], {"TUNE_GLOBAL_CHECKPOINT_S": "auto"})


@pytest.mark.slow
def test_scale_quick_runs_a_simulated_sweep_on_declared_gpus_and_writes_its_row(tmp_path):
    out = tmp_path / "scale.md"
    assert _load("scale").main(["--quick", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    before, now = (next(line for line in lines if line.startswith(f"| {label} | 40 | 2 | 1 |")) for label in ("before", "now"))
    assert float(before.split("|")[12]) == pytest.approx(1.0)  # per-epoch reporting: a Tune result per trial-epoch
    assert float(now.split("|")[12]) < 0.9  # reports at ASHA's rungs only
    assert "2 trainers (torch imported in one: False)" in out.read_text()
    # Two drivers on the same packed trainers, each with half the trials: every trial and epoch in the tables.
    assert any(line.startswith("| now, 2 drivers | 40 | 2 | 2 |") for line in lines)
    assert "now, 2 drivers, 40 trials, 2 GPUs: 2 trainers" in out.read_text()
    assert out.read_text().count("epochs.parquet complete: True") == 3
    # Each row's CPU is attributed to the processes that spent it: the driver, Tune's trials, the trainers.
    by_process = [line for line in lines if line.startswith("- now, 40 trials, 2 GPUs: total ")]
    assert len(by_process) == 1 and all(name in by_process[0] for name in ("driver ", "PackTrainer ", "raylet "))


def test_sweep_throughput_counts_a_rung_results_carried_epochs_as_epoch_time(tmp_path):
    """A result at a rung spans the epochs it carries (Tune's time_this_iter_s does): their epoch_s is
    training time, not report time."""
    import json

    folder = tmp_path / "ray" / "trial_0"
    folder.mkdir(parents=True)
    carried = [{"epoch": 1, "epoch_s": 2.0}, {"epoch": 2, "epoch_s": 2.5}]
    results = [{"trial_id": "t0", "epoch": 3, "epoch_s": 3.0, "time_this_iter_s": 7.75, "reported_at": 10.0,
                "carried_epochs": carried}]
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in results))
    rows = _load("sweep_throughput")._iterations(tmp_path)
    assert rows["epoch_s"].tolist() == [7.5] and rows["epoch"].tolist() == [3]


@pytest.mark.slow
def test_search_quality_quick_tables_every_searcher_in_every_space_and_plots_them(tmp_path):
    out = tmp_path / "q.md"
    module = _load("search_quality")
    assert module.main(["--quick", "--out", str(out)]) == 0

    text = out.read_text()
    assert "command: `python benchmarks/search_quality.py --quick" in text and "cores" in text
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and len(line.split("|")) == 10]
    found = {(r[0], r[1]): r for r in rows if r[0] in module.SPACES}
    assert set(found) == {(s, m) for s in module.SPACES for m in module.METHODS.values()}, text
    number = r"[\d,.]+"
    for row in found.values():
        assert re.fullmatch(rf"{number} \[{number}, {number}\]", row[3]), row  # trial-epochs spent
        assert re.fullmatch(r"\d+ of 1", row[5]), row
        for cell in row[6:8]:  # best at the common budget, final best: finite val_loss
            median, low, high = map(float, re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", cell).groups())
            assert 0 < low <= median <= high < 1, row
    assert out.with_suffix(".png").stat().st_size > 0
