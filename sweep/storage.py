"""Where a sweep lives when its storage_path is an object store (s3://..., gs://...) rather than a folder.

Ray Tune writes the experiment (checkpoints, results) there itself, through pyarrow's filesystems.
The driver keeps a local mirror under results/<name>/ (sweep.yaml, the Optuna study, the tables and
the small files of Ray's folder, without model weights) and copies sweep.yaml, study.journal and the
tables up; Ray's folder carries a snapshot of the study taken with each of Ray's own snapshots, so a
driver on any machine can `sweep resume` or `sweep analyze` from the URI alone.
"""
from __future__ import annotations

import fnmatch
import io
import os
import urllib.parse
from pathlib import Path
from typing import Iterable, Optional

import pyarrow as pa
import pyarrow.fs as pafs

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


class OverwritingFile(io.FileIO):
    """A file written over its old bytes instead of emptied first, and cut to the new length when closed:
    until then, the new bytes written so far followed by the old ones past them."""

    def __init__(self, path):
        super().__init__(os.open(path, os.O_WRONLY | os.O_CREAT, 0o666), "wb")

    def close(self) -> None:
        if not self.closed:
            try:
                self.truncate(self.tell())
            finally:
                super().close()


class WholeFiles(pafs.FileSystemHandler):
    """The local file system Ray writes a sweep's experiments through (RunConfig's and Tuner.restore's
    storage_filesystem): a state file of Ray's (RAY_STATE) appears under its name only once whole. Ray
    copies them into the experiment folder in place, so a driver killed mid-copy would leave one cut short,
    which Tuner.restore cannot read. The temp file of a copy a kill interrupted stays behind, hidden
    (.NAME.*.tmp), matching none of Ray's names.

    Ray copies the whole experiment folder with each snapshot, every trial's params.json, result.json and
    logs again over themselves; those files are only ever appended to or left as they are, so a copy
    over one writes it without emptying it first (OverwritingFile): a kill mid-copy leaves the file as
    it was or longer, never a finished trial's params.json empty. A new file, and every other call, goes
    to pyarrow's own local file system, which moves the bytes in C++ without taking Python's lock from
    the driver's loop, as a temp file per file per snapshot would."""

    def __init__(self):
        self.local = pafs.LocalFileSystem()  # its Python methods guess compression from a name: never here

    def __eq__(self, other):
        return isinstance(other, WholeFiles)

    def __ne__(self, other):
        return not isinstance(other, WholeFiles)

    def get_type_name(self) -> str:
        return "aesweep-whole-files"

    def normalize_path(self, path):
        return self.local.normalize_path(path)

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.local.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok):
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise PermissionError("a sweep never empties the root folder")

    def delete_file(self, path):
        self.local.delete_file(path)

    def move(self, src, dest):
        self.local.move(src, dest)

    def copy_file(self, src, dest):
        self.local.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.local.open_input_stream(path, compression=None)

    def open_input_file(self, path):
        return self.local.open_input_file(path)

    def open_output_stream(self, path, metadata):
        name = path.rsplit("/", 1)[-1]
        if any(fnmatch.fnmatch(name, pattern) for pattern in RAY_STATE):
            self.local.create_dir(path.rsplit("/", 1)[0], recursive=True)
            return pa.PythonFile(ReplacingFile(path), mode="w")
        if os.path.isfile(path):
            return pa.PythonFile(OverwritingFile(path), mode="w")
        return self.local.open_output_stream(path, compression=None, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.local.open_append_stream(path, compression=None, metadata=metadata)


def ray_filesystem(remote: Optional[str]) -> Optional[pafs.FileSystem]:
    """What Ray writes a sweep's experiment through: for an object store (`remote`) the store's own file
    system, which replaces an object whole (None: Ray picks it from the URI); else WholeFiles."""
    return None if remote else pafs.PyFileSystem(WholeFiles())


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

