"""`sweep confirm`: the top K configurations of a finished sweep trained again with S seeds each. One small CPU
sweep (3 vanilla trials, 1 epoch) run with a `confirm:` block serves the end-to-end assertions; a copy of it
is confirmed again and its driver killed mid-way to check the resume; the statistics and the refusals that
need no Ray run without it."""
import glob
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from aemodels import TrainConfig
from cli_calls import run_cli
from aemodels.pack import TrainState, epoch_order, generator
from sweep import load_results
from sweep.cli import main
from sweep.confirm import candidates, read_runs, run_key, seeds_for
from sweep.experiment import complete, state_files
from sweep.results import interval, summarise
from sweep.report import confirm_figure
from sweep.spec import SpecError, load

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "configs" / "quick.yaml")
SMALL = {"name": "small", "train": {"epochs": 1, "batch_size": 128, "train_subset": 256, "seed": 0},
         "space": {"variant": "vanilla", "latent_dim": {"logint": [2, 64]}, "lr": {"loguniform": [1.0e-4, 1.0e-2]}},
         "searcher": {"seed": 0, "n_startup_trials": 3}, "scheduler": {"grace_period": 1, "reduction_factor": 2},
         "num_samples": 3, "resources": {"cpu": 1}, "confirm": {"top": 2, "seeds": 2}}


def one_line_error(capsys, *args) -> str:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    return err


def sweep_process(cwd: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "sweep.cli", *args], cwd=cwd, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    return out


# ---- no Ray -----------------------------------------------------------------------------------------

def test_the_interval_is_students_t_on_the_sample_standard_deviation():
    losses = [0.10, 0.12, 0.11, 0.13, 0.09]
    mean, std, low, high = interval(losses)
    # By hand: mean 0.11; squared deviations sum to 0.001, so s = sqrt(0.001 / 4) = 0.0158114; the t table's
    # 97.5% point for 4 degrees of freedom is 2.776445; half-width 2.776445 * 0.0158114 / sqrt(5) = 0.0196324.
    assert mean == pytest.approx(0.11, abs=1e-12)
    assert std == pytest.approx(0.0158114, abs=1e-7)
    assert (low, high) == (pytest.approx(0.11 - 0.0196324, abs=1e-7), pytest.approx(0.11 + 0.0196324, abs=1e-7))
    assert all(math.isnan(v) for v in interval([0.2])[1:])  # one seed: a mean, no interval


def test_summary_ranks_by_mean_and_puts_a_configuration_with_a_diverged_seed_last():
    rows = []
    for rank, trial, losses, search in ((1, "a", [0.30, 0.32, 0.31], 0.20), (2, "b", [0.25, 0.26, 0.24], 0.21),
                                        (3, "c", [0.10, math.nan, 0.11], 0.22)):
        for seed, loss in enumerate(losses):
            rows.append({"rank": rank, "trial_id": trial, "variant": "vanilla", "latent_dim": 8, "lr": 1e-3,
                         "noise_factor": None, "sparsity_weight": None, "seed": seed,
                         "status": "diverged" if math.isnan(loss) else "completed", "final_val_loss": loss,
                         "search_val_loss": search})
    summary = summarise(pd.DataFrame(rows)).set_index("trial_id")
    assert summary.loc["b", "confirmed_rank"] == 1 and summary.loc["a", "confirmed_rank"] == 2
    assert summary.loc["c", "confirmed_rank"] == 3 and summary.loc["c", "diverged"] == 1
    assert summary.loc["b", "mean_val_loss"] == pytest.approx(0.25) and summary.loc["b", "seeds"] == 3
    assert summary.loc["a", "search_val_loss"] == 0.20 and summary.loc["a", "rank"] == 1


def test_each_seed_is_its_own_stream_of_weights_batches_and_noise(data_dir):
    spec = load(QUICK)
    assert seeds_for(spec, 3) == [0, 1, 2]  # the sweep's own seed first
    a, b = (TrainConfig(variant="denoising", latent_dim=8, train_subset=1000, seed=s) for s in (0, 1))
    first, second = TrainState.initial(a), TrainState.initial(b)
    assert any(not first.model[k].equal(second.model[k]) for k in first.model)
    assert not epoch_order(a, 0, 60000).equal(epoch_order(b, 0, 60000))
    assert not pd.Series(epoch_order(a, 0, 60000).tolist()).equals(pd.Series(epoch_order(a, 1, 60000).tolist()))
    noise = [__import__("torch").rand(4, generator=generator(s, "noise", 0)) for s in (0, 1)]
    assert not noise[0].equal(noise[1])


def test_a_confirm_block_is_checked_with_the_sweep_file():
    assert load(QUICK, ("confirm={top: 2, seeds: 3}",)).confirm.seeds == 3
    with pytest.raises(SpecError, match="confirm.top=13 exceeds num_samples=12"):
        load(QUICK, ("confirm={top: 13}",))
    with pytest.raises(SpecError, match="confirm.seeds must be >= 1"):
        load(QUICK, ("confirm={seeds: 0}",))


def test_bad_counts_and_an_unknown_sweep_exit_2_with_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "--seeds: must be >= 1" in one_line_error(capsys, "confirm", "nope", "--seeds", "0")
    assert "--top: must be >= 1" in one_line_error(capsys, "confirm", "nope", "--top", "0")
    assert "no sweep 'nope'" in one_line_error(capsys, "confirm", "nope")


# ---- one small sweep ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def confirmed(tmp_path_factory, data_dir):
    """A 3-trial sweep whose `confirm:` block trains its top 2 configurations with 2 seeds each."""
    root = tmp_path_factory.mktemp("confirm")
    (root / "small.yaml").write_text(yaml.safe_dump(SMALL))
    out = finish(sweep_process(root, "run", "small.yaml"))
    return root, root / "results" / "small", out


@pytest.mark.slow
def test_confirm_trains_the_top_configurations_with_each_seed(capsys, confirmed, monkeypatch):
    root, home, out = confirmed
    monkeypatch.chdir(root)
    assert "0 of 4 runs done, 4 to train" in out and "confirmed best: trial" in out, out
    found = load_results("small")
    table = pd.read_parquet(home / "confirm.parquet")
    assert len(pd.read_csv(home / "confirm.csv")) == len(table) == 4
    ranked = found.trials[found.trials["status"] == "completed"].sort_values("final_val_loss")
    assert list(table.drop_duplicates("trial_id")["trial_id"]) == list(ranked["trial_id"][:2])
    assert sorted(table["seed"]) == [0, 0, 1, 1] and set(table["status"]) == {"completed"}
    assert set(table["epochs"]) == {1} and table["wall_s"].gt(0).all()
    for column in ("variant", "latent_dim", "lr", "best_val_loss", "search_val_loss"):
        assert column in table
    # The sweep's own seed reproduces the sweep's trial exactly; the other seed trains something else.
    own = table[table["seed"] == 0].set_index("trial_id")["final_val_loss"]
    assert all(own[t] == ranked.set_index("trial_id").loc[t, "final_val_loss"] for t in own.index)
    assert (table[table["seed"] == 1]["final_val_loss"].values != own.values).all()

    summary = found.confirmed().set_index("trial_id")
    for trial_id, runs in table.groupby("trial_id"):
        mean, _, low, high = interval(runs["final_val_loss"])
        assert summary.loc[trial_id, "mean_val_loss"] == pytest.approx(mean)
        assert (summary.loc[trial_id, "ci_low"], summary.loc[trial_id, "ci_high"]) == (pytest.approx(low),
                                                                                        pytest.approx(high))
    best = summary["confirmed_rank"].idxmin()
    assert best == summary["mean_val_loss"].idxmin()

    # best_config.yaml names the best mean, with its interval and the search's own best beside it.
    text = (home / "best_config.yaml").read_text()
    assert f"confirmed best of sweep small: trial {best}" in text and "the search's own best" in text
    config = TrainConfig(**yaml.safe_load(text))
    assert config == found.confirmed_config() and found.best_trial == ranked.iloc[0]["trial_id"]
    assert (found.best_config.latent_dim, found.best_config.lr) == tuple(ranked.iloc[0][["latent_dim", "lr"]])
    code, printed, note = run_cli(capsys, "best", "small")
    assert code == 0 and TrainConfig(**yaml.safe_load(printed)) == config and "confirmed best" in note
    code, printed, _ = run_cli(capsys, "best", "small", "--searched", "--format", "json")
    assert code == 0 and TrainConfig(**json.loads(printed)) == found.best_config
    assert confirm_figure(found.confirm, found.confirmed()) is not None

    # Asked again, it trains nothing (no Ray started, no new run); the refusals change nothing.
    code, printed, _ = run_cli(capsys, "confirm", "small", "--top", "2", "--seeds", "2")
    assert code == 0 and "4 of 4 runs done, 0 to train" in printed
    assert [p.name for p in (home / "confirm").glob("run-*")] == ["run-0"]
    assert "has 3 completed trial(s)" in one_line_error(capsys, "confirm", "small", "--top", "4")
    assert len(candidates(found, None)) == 3  # without --top: 5, or every completed trial when fewer
    status = (home / "status.json").read_text()
    try:
        (home / "status.json").write_text(json.dumps({**json.loads(status), "state": "stopped"}))
        assert "`sweep resume" in one_line_error(capsys, "confirm", "small")
    finally:
        (home / "status.json").write_text(status)
    assert pd.read_parquet(home / "confirm.parquet").equals(table)


def checkpointed(home: Path) -> dict[str, list[tuple[str, int]]]:
    """The checkpoints each confirm run wrote (one per epoch it trained), with when, by its run key."""
    runs = {}
    for params in (home / "confirm").glob("run-*/*/params.json"):
        try:
            config = json.loads(params.read_text())
        except ValueError:  # Ray's first copy of it, cut short by the kill: sweep.confirm.read_runs skips it too
            continue
        runs[run_key(config)] = sorted((c.name, max(f.stat().st_mtime_ns for f in c.iterdir()))
                                       for c in params.parent.glob("checkpoint_*"))
    return runs


@pytest.mark.slow
def test_a_killed_confirm_resumes_without_training_a_finished_run_again(confirmed, tmp_path):
    """Killed while Ray copies its state into the run's folder as often as it can: every state file is
    left whole (sweep.storage.WholeFiles), and the confirm goes on from it."""
    root, home, _ = confirmed
    copy = tmp_path / "results" / "small"
    shutil.copytree(home, copy, ignore=shutil.ignore_patterns("confirm", "confirm.*", "report"))
    args = ("confirm", str(copy), "--top", "3", "--seeds", "2", "--epochs", "2")
    proc = sweep_process(tmp_path, *args)

    def ended() -> int:
        rows = [[json.loads(x) for x in open(p) if x.strip().endswith("}")]
                for p in glob.glob(str(copy / "confirm" / "run-*" / "*" / "result.json"))]
        return sum(1 for r in rows if r and r[-1]["epoch"] >= 2)

    while proc.poll() is None and ended() < 2:
        time.sleep(0.1)
    assert proc.poll() is None, "the confirm ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, as a crash would
    proc.wait()
    run = copy / "confirm" / "run-0"
    assert all(complete(p.read_bytes(), p.name) for p in state_files(run))
    time.sleep(5)  # a trial's worker outlives its raylet by a moment, and may still copy its last checkpoint
    done = {r["key"] for r in read_runs(copy, 2) if r["status"] == "completed"}
    before = {k: v for k, v in checkpointed(copy).items() if k in done}
    assert 2 <= len(before) < 6

    out = finish(sweep_process(tmp_path, *args))
    assert f"{len(before)} of 6 runs done, {6 - len(before)} to train" in out, out
    table = pd.read_parquet(copy / "confirm.parquet")
    assert len(table) == 6 and table["trial_id"].nunique() == 3 and sorted(set(table["seed"])) == [0, 1]
    assert set(table["status"]) == {"completed"} and set(table["epochs"]) == {2}
    finished = [r for r in read_runs(copy, 2) if r["status"] == "completed"]
    assert sorted(r["key"] for r in finished) == sorted(set(r["key"] for r in finished))  # each trained once
    # A finished run that the restored state still lists as running is restarted and ends at once, with
    # no epoch trained again: it writes no new checkpoint.
    assert {k: v for k, v in checkpointed(copy).items() if k in before} == before
    # Ray restored run-0, so no new experiment, but for a run its snapshot (up to seconds older than the
    # kill) had not started: that one is trained in run-1.
    runs = sorted(p.name for p in (copy / "confirm").glob("run-*"))
    assert runs in (["run-0"], ["run-0", "run-1"]), runs
