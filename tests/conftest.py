"""Shared fixtures: the MNIST folder (unpacked once from ../shared/data/mnist if .ci/run has not), small configs."""
from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import pytest

# Before anything imports Ray: a local Ray a test starts listens on 127.0.0.1 only (sweep.runner.LOOPBACK_ENV).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"
RAW = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _has_mnist(root) -> bool:
    return bool(root) and all((Path(root) / "MNIST" / "raw" / f).is_file() for f in RAW)


def _unpack(root: Path) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in RAW:
        with gzip.open(SHARED_MNIST / f"{name}.gz") as src, open(raw / name, "wb") as dst:
            shutil.copyfileobj(src, dst)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A folder with MNIST/raw/*; also exported as AEMODELS_DATA_DIR for CLI subprocesses."""
    for candidate in (os.environ.get("AEMODELS_DATA_DIR"), REPO / ".data"):
        if _has_mnist(candidate):
            root = Path(candidate)
            break
    else:
        if not SHARED_MNIST.is_dir():
            pytest.fail("MNIST not found: run .ci/run, or set AEMODELS_DATA_DIR to a folder holding MNIST/raw/")
        root = tmp_path_factory.mktemp("data")
        _unpack(root)
    os.environ["AEMODELS_DATA_DIR"] = str(root)
    return str(root)


@pytest.fixture
def small(data_dir):
    """A factory of quick CPU TrainConfigs: 1,000 images, 2 epochs unless told otherwise."""
    from aemodels import TrainConfig

    def make(**changes):
        values = dict(train_subset=1000, epochs=2, device="cpu", data_dir=data_dir)
        values.update(changes)
        return TrainConfig(**values)

    return make


@pytest.fixture
def no_ray(monkeypatch, tmp_path, data_dir):
    """In tmp_path (where a sweep file's results/ would go), with ray.init refused: for commands that must
    stop, or finish, before Ray starts."""
    import ray

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("the command started or joined Ray"))
    return tmp_path
