"""The report without Ray: a trial whose checkpoint is gone is retrained and that is said (on the console and on
the page), and the page escapes what it shows."""
import contextlib
import io

import pandas as pd
import pytest

from sweep.report import write_report
from sweep.results import EPOCH_COLUMNS, HYPER_DTYPES, TRIAL_COLUMNS, Results
from sweep.spec import load

SCRIPT = "<script>alert('x')</script>"


@pytest.fixture(scope="module")
def no_checkpoint(tmp_path_factory, data_dir):
    """A one-trial vanilla sweep whose tables say it completed, with nothing of Ray's folder left; reported once
    with quiet=True: (results, the page, what it wrote to stderr)."""
    home = tmp_path_factory.mktemp("no_checkpoint")
    spec = load("configs/quick.yaml", ("train.epochs=1", "train.train_subset=200", "space.variant=vanilla",
                                        "space.noise_factor=null", "space.sparsity_weight=null",
                                        f"data_dir={data_dir}", f"description={SCRIPT}"))
    trials = pd.DataFrame([{"trial_id": "t0001", "variant": "vanilla", "latent_dim": 2, "lr": 1e-3,
                            "status": "completed", "epochs": 1, "best_val_loss": 0.06, "final_val_loss": 0.06,
                            "final_train_loss": 0.07, "device": "cpu", "num_failures": 0}],
                          columns=TRIAL_COLUMNS).astype(HYPER_DTYPES)
    epochs = pd.DataFrame([{"trial_id": "t0001", "epoch": 1, "train_loss": 0.07, "val_loss": 0.06,
                            "status": "completed"}], columns=EPOCH_COLUMNS)
    results = Results(home, spec, trials, epochs, "t0001",
                      spec.train_config({"variant": "vanilla", "latent_dim": 2}))
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        page = write_report(results, quiet=True).read_text()
    return results, page, stderr.getvalue()


def test_a_model_retrained_for_the_report_is_announced_and_noted_on_the_page(no_checkpoint):
    results, page, stderr = no_checkpoint
    assert "retraining trial t0001" in stderr and "no readable checkpoint" in stderr  # quiet silences only progress
    warning = page.split("<h2>The best models</h2>")[1].split("</div>")[0]
    assert '<div class="warn">' in warning and "Retrained for this report" in warning
    assert "best vanilla (trial t0001): no readable checkpoint" in warning
    assert "best vanilla (trial t0001, vanilla, latent_dim 2): retrained (no readable checkpoint)" in page
    assert {p.name for p in (results.home / "report").glob("*.png")} >= {"reconstructions.png", "latent.png"}


def test_the_page_escapes_what_it_shows(no_checkpoint):
    _, page, _ = no_checkpoint
    assert SCRIPT not in page and "<script" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert '<tr class="best">' in page and '<td class="text">t0001</td>' in page and "<td>0.06</td>" in page
