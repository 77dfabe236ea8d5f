"""Atomic file writes: a reader, or a crash, sees the previous file or the new one, never half of one.

Standard library only, so both sides of the aemodels / sweep line use this one writer without
importing torch, Ray or pyarrow.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from typing import Callable

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _temp_beside(target: str) -> tuple[int, str]:
    return tempfile.mkstemp(dir=os.path.dirname(target) or ".", prefix=f".{os.path.basename(target)}.",
                            suffix=".tmp")


def write_atomic(target, write: Callable[[str], None], *, durable: bool = True) -> None:
    """Call `write(tmp)` with the path of a fresh temp file beside `target`, then rename it onto `target`.

    durable=True fsyncs the temp file before the rename, so a power cut cannot leave an empty file
    under the final name; durable=False skips it, for a file about to be copied elsewhere or rewritten
    within seconds. The temp file starts as 0600 (mkstemp); `write` may chmod it. Any error removes it.
    """
    target = os.fspath(target)
    fd, tmp = _temp_beside(target)
    os.close(fd)
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(target, data: bytes, *, durable: bool = True) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    write_atomic(target, write, durable=durable)


def write_text_atomic(target, text: str, *, durable: bool = True) -> None:
    write_bytes_atomic(target, text.encode("utf-8"), durable=durable)


class ReplacingFile(io.FileIO):
    """A file open for writing whose bytes appear under `target` only when it is closed, whole: they go to a
    temp file beside it, renamed onto `target` by close(). For a writer that wants a file object rather than
    a callback (pyarrow's copies into a sweep's folder, sweep.storage.WholeFiles). A write that raised, or
    an exception out of its `with` block, discards them. The file gets the permissions a plain open() would
    give it, not mkstemp's 0600, as others may read a shared results folder."""

    def __init__(self, target):
        self.target = os.fspath(target)
        fd, self.tmp = _temp_beside(self.target)
        os.fchmod(fd, 0o666 & ~_UMASK)
        super().__init__(fd, "wb")
        self.failed = False

    def write(self, data) -> int:
        try:
            return super().write(data)
        except BaseException:
            self.failed = True
            raise

    def __exit__(self, kind, value, traceback):
        self.failed = self.failed or kind is not None
        return super().__exit__(kind, value, traceback)

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        if self.failed:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
        else:
            os.replace(self.tmp, self.target)
