"""MNIST / Fashion-MNIST as uint8 tensors resident on the training device, loaded once per process.

torchvision's dataset classes read (or download) the IDX files; nothing here uses a DataLoader:
the training loop draws batches by indexing the resident tensor with a permutation.
"""
from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

DATA_DIR_ENV = "AEMODELS_DATA_DIR"
OFFLINE_ENV = "AEMODELS_OFFLINE"  # 1: never try to download (clusters without internet fail at once)
_TORCHVISION_CLASS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class DataError(RuntimeError):
    """The dataset cannot be had; the message is one line naming the folder and the files expected there."""


@dataclass(frozen=True)
class Dataset:
    """Images flattened to (N, 784) uint8 and labels (N,) int64, on one device."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.train_images.device

    def to(self, device) -> "Dataset":
        if torch.device(device) == self.device:
            return self
        return Dataset(self.name, *(t.to(device) for t in (self.train_images, self.train_labels, self.test_images,
                                                          self.test_labels)))


def data_root(data_dir: Optional[str] = None) -> Path:
    """The folder holding `MNIST/raw/...`: data_dir, else $AEMODELS_DATA_DIR, else ~/.cache/aemodels."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV) or Path.home() / ".cache" / "aemodels"
    return Path(chosen).expanduser().resolve()


def raw_folder(name: str, data_dir: Optional[str] = None) -> Path:
    return data_root(data_dir) / _TORCHVISION_CLASS[name] / "raw"


def ensure_dataset(name: str, data_dir: Optional[str] = None, download: bool = True) -> Path:
    """Make sure the four IDX files are in place (unpacking .gz copies, else downloading); return the root."""
    if name not in _TORCHVISION_CLASS:
        raise DataError(f"unknown dataset {name!r} (known: {', '.join(_TORCHVISION_CLASS)})")
    root = data_root(data_dir)
    raw = raw_folder(name, data_dir)
    _gunzip_local_copies(raw)
    if all((raw / f).is_file() for f in RAW_FILES):
        return root
    expected = ", ".join(RAW_FILES)
    if not download or os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise DataError(f"{name} files are missing in {raw} (expected {expected}); unpack a copy there (README: offline data)")
    from torchvision import datasets

    cls = getattr(datasets, _TORCHVISION_CLASS[name])
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as exc:  # torchvision raises RuntimeError / URLError / OSError depending on what failed
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{name} files are missing in {raw} (expected {expected}) and downloading them failed "
                        f"({reason}); unpack a copy there (README: offline data)") from None
    return root


def _gunzip_local_copies(raw: Path) -> None:
    """Accept `train-images-idx3-ubyte.gz` next to where torchvision wants the unpacked file."""
    for name in RAW_FILES:
        packed, target = raw / f"{name}.gz", raw / name
        if packed.is_file() and not target.is_file():
            with gzip.open(packed, "rb") as src, tempfile.NamedTemporaryFile(dir=raw, delete=False) as dst:
                shutil.copyfileobj(src, dst)
            os.replace(dst.name, target)


# The process's datasets, read once: {(name, data root, device): Dataset}. A per-process cache is the
# point (a second train() reuses the data); `provide` lets a caller hand over a copy it already has.
_LOADED: dict[tuple, Dataset] = {}


def _read(name: str, root: str) -> Dataset:
    from torchvision import datasets

    cls = getattr(datasets, _TORCHVISION_CLASS[name])
    train, test = cls(root, train=True, download=False), cls(root, train=False, download=False)
    flat = lambda images: images.reshape(len(images), -1).contiguous()  # noqa: E731
    return Dataset(name, flat(train.data), train.targets.long(), flat(test.data), test.targets.long())


def provide(dataset: Dataset, data_dir: Optional[str] = None) -> None:
    """Use `dataset` (already read, e.g. sent by a sweep's driver) for `load_dataset(dataset.name, data_dir)`.

    The worker then needs neither the files nor torchvision's import (about 1.3 s per process).
    """
    _LOADED.setdefault((dataset.name, str(data_root(data_dir)), "cpu"), dataset.to("cpu"))


def load_dataset(name: str, data_dir: Optional[str] = None, device: str | torch.device = "cpu",
                 download: bool = True) -> Dataset:
    """The dataset on `device`, read from disk (or downloaded) the first time a process asks for it."""
    device, root = str(torch.device(device)), str(data_root(data_dir))
    key = (name, root, device)
    if key not in _LOADED:
        cpu_key = (name, root, "cpu")
        if cpu_key not in _LOADED:
            _LOADED[cpu_key] = _read(name, str(ensure_dataset(name, data_dir, download)))
        _LOADED[key] = _LOADED[cpu_key].to(device)
    return _LOADED[key]
