"""Where a sweep lives when its storage_path is an object store (s3://..., gs://...) rather than a folder.

Ray Tune writes the experiment (checkpoints, results) there itself, through pyarrow's filesystems.
The driver keeps a local mirror under results/<name>/ (sweep.yaml, the Optuna study, the tables and
the small files of Ray's folder, without model weights) and copies sweep.yaml, study.journal and the
tables up; Ray's folder carries a snapshot of the study taken with each of Ray's own snapshots, so a
driver on any machine can `sweep resume` or `sweep analyze` from the URI alone.
"""
from __future__ import annotations

import fnmatch
import os
import urllib.parse
from pathlib import Path
from typing import Iterable, Optional

import pyarrow.fs as pafs
from fsspec.implementations.local import LocalFileSystem

from aemodels.files import ReplacingFile, write_bytes_atomic

HEAVY = ("state.pt",)  # model weights stay remote; everything else is small


def is_remote(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def join(uri: str, *parts: str) -> str:
    """The parts appended to the URI's path, before its query: pyarrow reads a query such as
    `s3://bucket/sweeps?region=us-east-1` as the file system's options, so it stays at the end."""
    split = urllib.parse.urlsplit(uri)
    return urllib.parse.urlunsplit(split._replace(path="/".join([split.path.rstrip("/"), *parts])))


def basename(uri: str) -> str:
    """The last part of the URI's path (its bucket when it has no path), without the query."""
    split = urllib.parse.urlsplit(uri)
    return split.path.rstrip("/").rsplit("/", 1)[-1] or split.netloc


# Ray's state files in an experiment folder, of which Tuner.restore reads the newest of each kind.
RAY_STATE = ("tuner.pkl", "experiment_state-*.json", "searcher-state-*.pkl", "search_gen_state-*.json")


class WholeFiles(LocalFileSystem):
    """The local file system Ray writes a sweep's experiments through (RunConfig's and Tuner.restore's
    storage_filesystem): a state file of Ray's (RAY_STATE) appears under its name only once whole. Ray
    copies them into the experiment folder in place, so a driver killed mid-copy would leave one cut short,
    which Tuner.restore cannot read. The temp file of a copy a kill interrupted stays behind, hidden
    (.NAME.*.tmp), matching none of Ray's names.

    Every other file (the trials' params.json, result.json, logs) is written in place, as Ray's own file
    system does: Ray copies the whole experiment folder with each snapshot, and a new file per copy costs
    a file creation and a rename each, which at thousands of trials took more of the driver than the
    trials did. A result.json cut short loses only lines its checkpoints hold, and its readers skip a
    cut line (sweep.experiment.result_rows)."""

    def _open(self, path, mode="rb", block_size=None, **kwargs):
        path = self._strip_protocol(path)
        name = path.rsplit("/", 1)[-1]
        if "w" not in mode:
            return super()._open(path, mode, block_size, **kwargs)
        if not any(fnmatch.fnmatch(name, pattern) for pattern in RAY_STATE):
            return super()._open(path, mode, block_size, **kwargs)
        self.makedirs(self._parent(path), exist_ok=True)
        return ReplacingFile(path)


def ray_filesystem(remote: Optional[str]) -> Optional[pafs.FileSystem]:
    """What Ray writes a sweep's experiment through: for an object store (`remote`) the store's own file
    system, which replaces an object whole (None: Ray picks it from the URI); else WholeFiles."""
    return None if remote else pafs.PyFileSystem(pafs.FSSpecHandler(WholeFiles()))


def _fs(uri: str):
    return pafs.FileSystem.from_uri(uri)


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def delete(uri: str) -> None:
    fs, path = _fs(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def download_tree(uri: str, local: Path, skip: Iterable[str] = HEAVY) -> None:
    """Mirror the files under `uri` into `local`, except the heavy ones (newer remote files win)."""
    fs, root = _fs(uri)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type != pafs.FileType.File or os.path.basename(info.path) in skip:
            continue
        target = local / os.path.relpath(info.path, root)
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as src:
            data = src.read()
        write_bytes_atomic(target, data, durable=False)


def download(uri: str, local: Path) -> bool:
    fs, path = _fs(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return False
    with fs.open_input_stream(path) as src:
        data = src.read()
    local.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(local, data, durable=False)
    return True


def read_bytes(uri: str) -> Optional[bytes]:
    """The object's content, or None if there is none."""
    fs, path = _fs(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as src:
        return src.read()


def upload(local: Path, uri: str) -> None:
    """One object per file: an object store replaces it whole, so readers never see half of one."""
    fs, path = _fs(uri)
    with fs.open_output_stream(path) as out:
        out.write(local.read_bytes())

