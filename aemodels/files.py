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


class ReplacingFile(io.FileIO):
    """A file open for writing whose bytes appear under `target` only when it is closed, whole: they go to a
    temp file beside it (`.NAME.*.tmp`, which no reader of a sweep's folder globs for), renamed onto `target`
    by close(). A write that raised, or an exception out of its `with` block, discards them. The file gets
    the permissions a plain open() would give it, not mkstemp's 0600, as others may read a shared results
    folder. For a writer that wants a file object (pyarrow's copies into a sweep's folder,
    sweep.storage.WholeFiles); write_atomic serves one that wants a path."""

    def __init__(self, target):
        self.target = os.fspath(target)
        fd, self.tmp = tempfile.mkstemp(dir=os.path.dirname(self.target) or ".",
                                        prefix=f".{os.path.basename(self.target)}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)
            super().__init__(fd, "wb")
        except BaseException:
            os.close(fd)
            os.unlink(self.tmp)
            raise
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
        try:
            super().close()
        except BaseException:
            self.failed = True
            raise
        finally:
            if self.failed:
                with contextlib.suppress(OSError):
                    os.unlink(self.tmp)
            else:
                os.replace(self.tmp, self.target)


def write_atomic(target, write: Callable[[str], None], *, durable: bool = True) -> None:
    """Call `write(tmp)` with the path of a fresh temp file beside `target` (a ReplacingFile's), then rename
    it onto `target`; any error removes it.

    For a writer that takes a path (torch.save, pandas, sqlite's backup). `write` may write the path
    afresh or replace it. durable=True fsyncs the file before the rename, so a power cut cannot leave an
    empty file under the final name; durable=False skips it, for a file about to be copied elsewhere or
    rewritten within seconds.
    """
    with ReplacingFile(target) as placeholder:
        write(placeholder.tmp)
        if durable:
            # The placeholder's descriptor may name a file `write` has since replaced: sync by path.
            fd = os.open(placeholder.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def write_bytes_atomic(target, data: bytes, *, durable: bool = True) -> None:
    with ReplacingFile(target) as fh:
        fh.write(data)
        if durable:
            os.fsync(fh.fileno())


def write_text_atomic(target, text: str, *, durable: bool = True) -> None:
    write_bytes_atomic(target, text.encode("utf-8"), durable=durable)
