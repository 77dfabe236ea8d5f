"""The live status line: epochs done and the best val_loss, from results that carry several epochs."""
import io
from types import SimpleNamespace

from sweep.progress import Progress
from sweep.epochs import CARRIED


def test_the_status_line_counts_carried_epochs_and_finds_the_best_among_them():
    progress = Progress(num_samples=2, max_epochs=8, interval_s=3600, stream=io.StringIO())
    result = {"epoch": 4, "val_loss": 0.30, "status": "running",
              CARRIED: [{"epoch": 3, "val_loss": 0.25, "status": "running"}]}
    trial = SimpleNamespace(trial_id="t0", config={"variant": "vanilla", "lr": 0.01}, status="RUNNING",
                            last_result={"epoch": 2, "val_loss": 0.4})  # Tune updates it after the callbacks
    progress.on_trial_result(0, [trial], trial, result)
    line = progress.status_line([trial])
    assert "| 4 epochs |" in line and "best val_loss 0.25000 (t0: variant=vanilla, lr=0.01)" in line
