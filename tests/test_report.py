"""`sweep analyze` writes report/: every figure a real PNG, an index.html that shows each one, on a finished
sweep and on one whose trials diverged, errored or lost their checkpoints; importances and edge flags."""
import contextlib
import glob
import io
import json
import re
import shutil

import numpy as np
import optuna
import pandas as pd
import pytest
from matplotlib.image import imread

from sweep import load_results
from sweep.cli import main
from sweep.figures import importance_figure, pareto_figure
from sweep.report import SEED_ARTICLE_POINTS, edge_flags, param_importances, trains_like_the_seed_article, _save
from sweep.results import HYPER_DTYPES, TRIAL_COLUMNS, Results
from sweep.spec import Param, load

pytestmark = pytest.mark.slow
SMALL = ["--set", "train.epochs=2", "--set", "train.train_subset=600", "--set", "scheduler.reduction_factor=2"]
ALWAYS = {"learning_curves.png", "hyperparameters.png", "pareto.png", "reconstructions.png", "latent.png"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory, data_dir):
    """configs/quick.yaml over all four variants, 6 trials of 2 epochs, run and analyzed once for the module."""
    root = tmp_path_factory.mktemp("report")
    assert main(["run", "configs/quick.yaml", "--set", f"storage_path={root}", "--set", "num_samples=6", *SMALL]) == 0
    return _analyze(root / "quick")


@pytest.fixture(scope="module")
def broken(tmp_path_factory, data_dir):
    """A vanilla sweep of three given points, the last one with lr=1e6 (it diverges in its first epoch); in a
    copy of it, the lr=3e-3 trial is made to have errored and the lr=1e-3 trial's checkpoints are unreadable."""
    root = tmp_path_factory.mktemp("broken")
    assert main(["run", "configs/quick.yaml", "--set", f"storage_path={root}", "--set", "name=broken",
                 "--set", "space.variant=vanilla", "--set", "space.noise_factor=null",
                 "--set", "space.sparsity_weight=null", "--set", "space.latent_dim=2",
                 "--set", "space.lr={choice: [1.0e-3, 3.0e-3, 1.0e6]}",
                 "--set", "points=[{lr: 1.0e-3}, {lr: 3.0e-3}, {lr: 1.0e6}]", "--set", "num_samples=3", *SMALL]) == 0
    home = shutil.copytree(root / "broken", root / "copy")
    trials = load_results(str(home)).trials.set_index("lr")
    _fake_error(home, trials.loc[3e-3, "trial_id"])
    for state in glob.glob(f"{home}/ray/*_{trials.loc[1e-3, 'trial_id']}_*/checkpoint_*/state.pt"):
        with open(state, "wb") as fh:
            fh.write(b"not a checkpoint")
    return home


def _fake_error(home, trial_id):
    """What Ray leaves of a trial that failed before its first report: status ERROR, an error file, no results."""
    state_file = sorted(glob.glob(f"{home}/ray/experiment_state-*.json"))[-1]
    with open(state_file) as fh:
        state = json.load(fh)
    for i, (trial_json, runtime_json) in enumerate(state["trial_data"]):
        trial, runtime = json.loads(trial_json), json.loads(runtime_json)
        if trial["trial_id"] == trial_id:
            trial["status"], runtime["last_result"], runtime["error_filename"] = "ERROR", {}, "error.txt"
            state["trial_data"][i] = [json.dumps(trial), json.dumps(runtime)]
            folder = home / "ray" / trial["relative_logdir"]
            for old in [*folder.glob("checkpoint_*"), folder / "result.json"]:
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            (folder / "error.txt").write_text("Traceback ...\nRuntimeError: a fake failure for the report test\n")
    with open(state_file, "w") as fh:
        json.dump(state, fh)
    # The study, whose word on a trial's end wins, recorded it as FAIL with no values (Optuna's journal:
    # one line per trial, written whole when it ended).
    journal = home / "study.journal"
    lines = []
    for line in journal.read_text().splitlines():
        op = json.loads(line)
        if op.get("user_attrs", {}).get("tune_trial_id") == trial_id:
            op.update(state=3, value=None, intermediate_values={})
            op["user_attrs"].update(status="error", epochs=0)
        lines.append(json.dumps(op))
    journal.write_text("\n".join(lines) + "\n")


def _analyze(home):
    """`sweep analyze HOME`: (home, the index.html text, what it printed)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["analyze", str(home)]) == 0
    return home, (home / "report" / "index.html").read_text(), printed.getvalue()


def _assert_valid_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path.name
    assert len(data) > 5_000, path.name
    pixels = imread(path)
    assert 200 <= pixels.shape[0] <= 4000 and 300 <= pixels.shape[1] <= 4000, (path.name, pixels.shape)
    assert np.ptp(pixels[..., :3]) > 0.5, f"{path.name} is blank"


def _figures(page: str) -> set:
    return set(re.findall(r'<img src="([^"]+\.png)"', page))


def test_analyze_writes_every_figure_and_an_index_showing_each(quick):
    quick, page, printed = quick
    assert f"report: {quick / 'report' / 'index.html'}" in printed
    results = load_results(str(quick))
    report = quick / "report"
    written = {p.name for p in report.glob("*.png")}
    usable = set(results.best_per_variant()["variant"])
    expected = set(ALWAYS)
    expected |= {"denoising.png"} if "denoising" in usable else set()
    expected |= {"sparsity.png"} if "sparse" in usable else set()
    assert expected <= written and _figures(page) == written
    for name in written:
        _assert_valid_png(report / name)
    assert not list(report.glob("*.tmp")) and not list(report.glob(".*"))


def test_index_has_the_best_per_variant_table_and_how_to_open_the_study(quick):
    quick, page, _ = quick
    results = load_results(str(quick))
    for row in results.best_per_variant().itertuples():
        assert f">{row.trial_id}<" in page and f"{row.final_val_loss:.4g}" in page
    assert f"optuna-dashboard {quick}/study.journal" in page
    assert f"tensorboard --logdir {quick}/ray" in page
    assert "Hyperparameter importance" in page and "<script" not in page and "http" not in page
    assert "<h2>Compute</h2>" in page and "CPU-hours" in page and "was first reached" in page


def test_report_survives_diverged_errored_trials_and_unreadable_checkpoints(broken):
    _, page, printed = _analyze(broken)
    assert "retraining" in printed
    trials = load_results(str(broken)).trials.set_index("lr")
    assert trials.loc[1e6, "status"] == "diverged" and trials.loc[3e-3, "status"] == "error"
    assert trials.loc[3e-3, "epochs"] == 0
    report = broken / "report"
    written = {p.name for p in report.glob("*.png")}
    assert ALWAYS <= written and _figures(page) == written
    for name in written:
        _assert_valid_png(report / name)
    assert "Errored trials" in page and "a fake failure for the report test" in page
    assert "retrained" in page  # the lr=1e-3 trial's checkpoints do not load
    assert "1 diverged" in page and "1 error" in page


def test_analyze_prints_each_variants_pareto_front(quick):
    home, page, printed = quick
    front = load_results(str(home)).pareto()
    section = printed.split("Pareto front (val_loss vs latent_dim)")[1].split("\ntables:")[0]
    assert not front.empty
    for variant, rows in front.groupby("variant"):
        (line,) = [line for line in section.splitlines() if line.split()[:1] == [variant]]
        for row in rows.itertuples():
            assert f"{row.latent_dim}: {row.final_val_loss:.4g} ({row.trial_id})" in line
    assert '<img src="pareto.png"' in page and "Pareto front" in page


def test_the_pareto_figure_marks_the_seed_articles_points_only_for_its_training_setup(tmp_path):
    assert trains_like_the_seed_article(load("configs/seed.yaml", ("name=renamed",)))
    assert not trains_like_the_seed_article(load("configs/quick.yaml"))
    rows = [("a", "vanilla", 2, "completed", 0.043), ("b", "vanilla", 32, "completed", 0.0146),
            ("c", "vanilla", 8, "stopped", 0.03), ("d", "conv", 32, "completed", 0.0086),
            ("e", "conv", 64, "diverged", float("nan"))]
    trials = pd.DataFrame([dict(zip(("trial_id", "variant", "latent_dim", "status", "final_val_loss"), r))
                           for r in rows], columns=TRIAL_COLUMNS).astype(HYPER_DTYPES)
    front = Results(tmp_path, None, trials, pd.DataFrame(), None, None).pareto()
    fig = pareto_figure(trials, front, SEED_ARTICLE_POINTS)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"  # latent dims 2 to 32 span more than 8x
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("seed article" in label for label in labels) and any("stopped" in label for label in labels)
    _save(fig, tmp_path / "pareto.png")
    _assert_valid_png(tmp_path / "pareto.png")
    assert pareto_figure(trials[trials["status"] == "diverged"], front.iloc[:0]) is None


def test_importances_are_per_variant_over_complete_trials_and_skipped_with_a_reason(tmp_path):
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=0))
    rng = np.random.default_rng(0)

    def objective(trial):
        variant = trial.suggest_categorical("variant", ["vanilla", "sparse", "conv"])
        lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        latent_dim = trial.suggest_int("latent_dim", 2, 64, log=True) if variant != "conv" else 16
        if variant == "sparse":
            trial.suggest_float("sparsity_weight", 1e-5, 1e-2, log=True)
        return abs(np.log10(lr) + 3) + 0.01 * rng.normal() + 0 * latent_dim

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=60)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sum(t.params["variant"] == "sparse" for t in complete) >= 5
    found, notes, evaluator = param_importances(study, ["vanilla", "sparse", "conv", "denoising"])
    assert set(found) == {"vanilla", "sparse"}
    assert set(found["vanilla"]) == {"lr", "latent_dim"} and sum(found["vanilla"].values()) == pytest.approx(1)
    assert found["vanilla"]["lr"] > found["vanilla"]["latent_dim"]
    assert set(found["sparse"]) == {"lr", "latent_dim", "sparsity_weight"}
    assert "only lr varies" in notes["conv"] and "0 complete trials" in notes["denoising"]
    fig = importance_figure(found, evaluator)
    _save(fig, tmp_path / "importance.png")
    _assert_valid_png(tmp_path / "importance.png")
    assert importance_figure({}, evaluator) is None


def test_best_values_near_the_end_of_a_range_are_flagged():
    import pandas as pd

    space = {"variant": Param("variant", "choice", ("vanilla", "sparse")),
             "lr": Param("lr", "loguniform", (), 1e-4, 1e-2),
             "latent_dim": Param("latent_dim", "choice", (2, 8, 32)),
             "noise_factor": Param("noise_factor", "uniform", (), 0.1, 0.7)}
    rows = pd.DataFrame([{"trial_id": "a", "variant": "vanilla", "lr": 9.5e-3, "latent_dim": 8, "noise_factor": None},
                         {"trial_id": "b", "variant": "sparse", "lr": 1e-3, "latent_dim": 32, "noise_factor": None}])
    flags = {(f["trial_id"], f["param"]) for f in edge_flags(rows, space)}
    assert flags == {("a", "lr"), ("b", "latent_dim")}


def test_the_study_opens_in_optuna_dashboard(quick):
    """optuna-dashboard's own WSGI app (what `optuna-dashboard results/<name>/study.journal` serves) lists the study and its trials."""
    dashboard = pytest.importorskip("optuna_dashboard")
    from wsgiref.util import setup_testing_defaults

    home = quick[0]
    app = dashboard.wsgi(f"{home}/study.journal")

    def get(path, query=""):
        env = {}
        setup_testing_defaults(env)
        env["PATH_INFO"], env["QUERY_STRING"] = path, query
        status = []
        body = b"".join(app(env, lambda s, headers, exc_info=None: status.append(s)))
        assert status == ["200 OK"], (path, status, body[:300])
        return json.loads(body)

    (summary,) = get("/api/studies")["study_summaries"]
    assert summary["study_name"] == "quick" and summary["directions"] == ["minimize"]
    trials = get(f"/api/studies/{summary['study_id']}", "after=0")["trials"]
    table = load_results(str(home)).trials
    states = sorted(t["state"] for t in trials)
    assert states == sorted({"completed": "Complete", "stopped": "Pruned", "diverged": "Pruned", "error": "Fail"}[s]
                            for s in table["status"])
