"""What `sweep run` checks before it writes or deletes anything, the lock on a sweep's name, and tables
that are never replaced by ones holding fewer finished trials. None of these start Ray."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from sweep.cli import main
from sweep.errors import ResultsError, SweepError
from sweep.results import build_tables, write_tables
from sweep.runner import claim, connect

RAW = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture
def truncated_mnist(tmp_path, data_dir) -> Path:
    """A copy of MNIST whose training images stop halfway, as a download cut short leaves them."""
    raw = tmp_path / "bad-data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in RAW:
        data = (Path(data_dir) / "MNIST" / "raw" / name).read_bytes()
        (raw / name).write_bytes(data[: len(data) // 2] if name == "train-images-idx3-ubyte" else data)
    return tmp_path / "bad-data"


def finished_sweep(root: Path, name: str = "quick") -> Path:
    """A sweep folder as a finished sweep leaves it: its spec and tables (no Ray needed)."""
    home = root / name
    home.mkdir(parents=True)
    (home / "sweep.yaml").write_text(textwrap.dedent(f"""\
        sweep:
          name: {name}
          dataset: mnist
          train: {{epochs: 2}}
          space: {{latent_dim: {{choice: [2, 8]}}, lr: 0.001}}
          num_samples: 2
          storage_path: {root}
        """))
    trials = pd.DataFrame({"trial_id": ["a_00000", "a_00001"], "variant": "vanilla", "latent_dim": [2, 8],
                           "lr": 0.001, "status": ["completed", "stopped"], "epochs": [2, 1],
                           "final_val_loss": [0.05, 0.07]})
    trials.to_parquet(home / "trials.parquet")
    return home


def run(*args) -> int:
    return main(["run", "configs/quick.yaml", *args])


def test_overwrite_with_unreadable_data_keeps_the_old_sweep(tmp_path, truncated_mnist, capsys):
    home = finished_sweep(tmp_path)
    before = {p.name: p.read_bytes() for p in home.iterdir()}
    code = run("--set", f"storage_path={tmp_path}", "--set", f"data_dir={truncated_mnist}", "--overwrite")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "train-images" in err
    assert {p.name: p.read_bytes() for p in home.iterdir()} == before


def test_unreadable_data_leaves_no_folder_behind(tmp_path, truncated_mnist, capsys):
    code = run("--set", f"storage_path={tmp_path}", "--set", f"data_dir={truncated_mnist}")
    assert code == 2 and capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "quick").exists()


def test_a_sweep_name_in_use_is_refused_before_anything_is_written(tmp_path, data_dir, capsys):
    with claim(tmp_path / "quick"):
        code = run("--set", f"storage_path={tmp_path}")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "in use by another" in err
    assert not (tmp_path / "quick").exists()
    with claim(tmp_path / "quick"):  # released: the name can be taken again
        pass


def test_the_lock_dies_with_its_driver(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""\
        import sys, time
        from pathlib import Path
        from sweep.runner import claim
        with claim(Path({str(tmp_path / 'quick')!r})):
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SweepError, match="in use by another"):
            with claim(tmp_path / "quick"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with claim(tmp_path / "quick"):
        pass


def test_tables_are_never_replaced_by_ones_that_lose_a_finished_trial(tmp_path):
    home = finished_sweep(tmp_path)
    before = (home / "trials.parquet").read_bytes()
    found = build_tables(home)  # no Ray folder: a table of no trials
    assert found.trials.empty
    with pytest.raises(ResultsError, match="lack 2 finished trial"):
        write_tables(found)
    assert (home / "trials.parquet").read_bytes() == before and not (home / "trials.csv").exists()


def test_a_local_ray_is_refused_unless_it_will_listen_on_loopback_only(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
    with pytest.raises(SweepError, match="every network interface"):
        connect(None, dashboard=False)


def test_the_command_starts_its_local_ray_on_loopback_only(tmp_path):
    """The variable must be set before Ray is imported: the command does it before importing the runner."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    probe = textwrap.dedent("""\
        import os, sys
        from sweep import cli
        cli.local_ray_on_loopback(sys.argv[1] if len(sys.argv) > 1 else None)
        print(os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"), "ray" in sys.modules)
        """)
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", "False"]
    out = subprocess.run([sys.executable, "-c", probe, "10.0.0.1:6379"], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["None", "False"]  # a driver joining a cluster announces its real address


def test_a_signal_as_the_trials_end_still_writes_the_tables_and_names_the_stop(monkeypatch):
    """Ctrl-C or SIGTERM that lands after fit() returned, while the tables are written or Ray shuts down,
    is a clean stop like one during the trials: recorded for the exit status, never a KeyboardInterrupt
    half-way through."""
    import signal

    from sweep import runner

    signal_at_shutdown = []

    def shutdown(started):
        if started and signal_at_shutdown:
            os.kill(os.getpid(), signal_at_shutdown.pop())
        return False

    monkeypatch.setattr(runner, "connect", lambda *args, **kwargs: True)
    monkeypatch.setattr(runner, "_disconnect", shutdown)
    spec = type("Spec", (), {"dashboard": False})()
    before = signal.getsignal(signal.SIGINT)
    with runner.ray_for_sweep(None, spec) as received:
        os.kill(os.getpid(), signal.SIGINT)  # as the tables are written
        tables_written = True
    assert tables_written and received == [signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is before

    before = signal.getsignal(signal.SIGTERM)
    signal_at_shutdown.append(signal.SIGTERM)
    with runner.ray_for_sweep(None, spec) as received:
        pass
    assert received == [signal.SIGTERM] and not signal_at_shutdown
    assert signal.getsignal(signal.SIGTERM) is before, "the handlers of before the sweep are back"


def test_a_driver_that_outlives_the_first_one_holds_the_sweep_until_it_ends(tmp_path):
    """Another driver (sweep.driver) of a sweep whose first driver died keeps writing into its folder until
    it stops: a resume (or --overwrite) beside it would run its experiment twice, so claim refuses."""
    home = tmp_path / "quick"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""\
        import time
        from pathlib import Path
        from filelock import FileLock
        from sweep.runner import driver_lock
        with FileLock(str(driver_lock(Path({str(home)!r}), 2))):
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SweepError, match="driver 2 of sweep 'quick' is still running .* wait for it to end"):
            with claim(home):
                pass
    finally:
        holder.kill()
        holder.wait()
    with claim(home):  # its lock died with it
        pass
