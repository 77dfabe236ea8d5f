"""MNIST / Fashion-MNIST as uint8 tensors resident on the training device, loaded once per process.

The IDX files are read here and downloaded by torchvision when missing; nothing uses a DataLoader:
the training loop draws batches by indexing the resident tensor with a permutation.
"""
from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .files import write_atomic

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

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.train_images, self.train_labels, self.test_images, self.test_labels

    def to(self, device) -> "Dataset":
        if torch.device(device) == self.device:
            return self
        return Dataset(self.name, *(t.to(device) for t in self.tensors))

    def __reduce__(self):
        """Pickled as NumPy arrays (arriving on the CPU), which Ray's object store passes without a copy.

        Ray pickles a torch tensor through torch.save, a copy and a serialisation on every put and
        get; arrays are put and read in place, several times faster (BENCHMARKS.md, sweep throughput).
        """
        return _from_arrays, (self.name, *(t.cpu().numpy() for t in self.tensors))


def _from_arrays(name: str, *arrays) -> Dataset:
    # An array Ray hands over is a read-only view of its shared memory, where a write would change
    # every other worker's copy: each receiver takes a private one.
    return Dataset(name, *(torch.from_numpy(a if a.flags.writeable else a.copy()) for a in arrays))


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
            def unpack(tmp: str) -> None:
                with gzip.open(packed, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)

            write_atomic(target, unpack, durable=False)


# The process's datasets, read once: {(name, data root, device): Dataset}. A per-process cache is the
# point (a second train() reuses the data); `provide` lets a caller hand over a copy it already has.
_LOADED: dict[tuple, Dataset] = {}


def _read(name: str, root: str) -> Dataset:
    raw = Path(root) / _TORCHVISION_CLASS[name] / "raw"
    train_x, train_y, test_x, test_y = (read_idx(raw / f) for f in RAW_FILES)
    flat = lambda images: images.reshape(len(images), -1)  # noqa: E731
    return Dataset(name, flat(train_x), train_y.long(), flat(test_x), test_y.long())


def read_idx(path: Path) -> torch.Tensor:
    """An unsigned-byte IDX file (the MNIST format) as a uint8 tensor of its shape.

    Written here rather than taken from torchvision.datasets, which reads the same bytes, because
    importing torchvision costs seconds in every process that reads the data (the sweep's driver,
    `sweep analyze`, retraining; BENCHMARKS.md); torchvision is still what downloads the files.
    tests/test_train.py checks the result against torchvision's reading, byte for byte.
    """
    import numpy as np

    data = Path(path).read_bytes()
    ndim = data[3] if len(data) >= 4 else 0
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or ndim == 0:
        raise DataError(f"{path} is not an unsigned-byte IDX file; replace it with the original (README: offline data)")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    start = 4 + 4 * ndim
    if len(data) - start != int(np.prod(dims)):
        raise DataError(f"{path} holds {len(data) - start} bytes of data, its header says {dims}: the file is "
                        "truncated or corrupt; replace it with the original")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=start).reshape(dims).copy())


def provide(dataset: Dataset, data_dir: Optional[str] = None) -> None:
    """Use `dataset` (already read, e.g. sent by a sweep's driver) for `load_dataset(dataset.name, data_dir)`.

    The worker then reads no files: on a cluster, nodes need no copy of the data.
    """
    _LOADED.setdefault(_key(dataset.name, data_dir), dataset.to("cpu"))


def provided(name: str, data_dir: Optional[str] = None) -> bool:
    """Whether this process already holds dataset `name` for `data_dir`, read from disk or provided."""
    return _key(name, data_dir) in _LOADED


def _key(name: str, data_dir: Optional[str], device: str = "cpu") -> tuple:
    return name, str(data_root(data_dir)), device


def load_dataset(name: str, data_dir: Optional[str] = None, device: str | torch.device = "cpu",
                 download: bool = True) -> Dataset:
    """The dataset on `device`, read from disk (or downloaded) the first time a process asks for it."""
    device = str(torch.device(device))
    key = _key(name, data_dir, device)
    if key not in _LOADED:
        cpu_key = _key(name, data_dir)
        if cpu_key not in _LOADED:
            _LOADED[cpu_key] = _read(name, str(ensure_dataset(name, data_dir, download)))
        _LOADED[key] = _LOADED[cpu_key].to(device)
    return _LOADED[key]
