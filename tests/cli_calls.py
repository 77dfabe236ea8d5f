"""The `sweep` command as tests call it: in this process (exit code and captured output) or in its own."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sweep.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys, *args):
    """`sweep ARGS` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(capsys, folder: Path, *args, message: str) -> None:
    """`sweep ARGS` refused as bad input must be: exit 2, one line naming `message`, nothing written in `folder`."""
    code, out, err = run_cli(capsys, *args)
    assert code == 2, (out, err)
    assert message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (folder / "results").exists(), "nothing may be written"


def sweep_cli(cwd: Path, *args: str) -> str:
    """The `sweep` command in its own process (Ray's local cluster ends with it); its output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "sweep.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout
