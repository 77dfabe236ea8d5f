"""Atomic file writes: a reader, or a crash, sees the previous file or the new one, never half of one.

Standard library only, so both sides of the aemodels / sweep line use this one writer without
importing torch, Ray or pyarrow.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Callable


def write_atomic(target, write: Callable[[str], None], *, durable: bool = True) -> None:
    """Call `write(tmp)` with the path of a fresh temp file beside `target`, then rename it onto `target`.

    durable=True fsyncs the temp file before the rename, so a power cut cannot leave an empty file
    under the final name; durable=False skips it, for a file about to be copied elsewhere or rewritten
    within seconds. The temp file starts as 0600 (mkstemp); `write` may chmod it. Any error removes it.
    """
    target = os.fspath(target)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target) or ".", prefix=f".{os.path.basename(target)}.",
                               suffix=".tmp")
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
