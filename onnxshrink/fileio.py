"""Atomic output files: a result is either written whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; rename it onto ``path`` when the
    block succeeds, delete it when the block raises (or is interrupted).

    The temporary file lives in the same folder so the final ``os.replace`` is
    atomic on POSIX; a crash or Ctrl-C never leaves a half-written ``path``.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=folder)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def read_at(f: BinaryIO, offset: int, size: int) -> bytearray:
    """Up to ``size`` bytes of the open file ``f`` from ``offset`` (fewer only
    at the end of the file), leaving its position alone.

    Reads in a loop: one ``read`` returns at most ~2 GiB on Linux.
    """
    out = bytearray(size)
    view = memoryview(out)
    done = 0
    fd = f.fileno()
    while done < size:
        n = os.preadv(fd, [view[done : done + _READ_CHUNK]], offset + done)
        if n == 0:
            break
        done += n
    view.release()
    if done < size:
        del out[done:]
    return out


_READ_CHUNK = 1 << 30


def copy_rest(src: BinaryIO, dst: BinaryIO) -> None:
    """Append what is left of file ``src`` (from its position) to file ``dst``,
    through the kernel where it can (no copy of the bytes in this process);
    both end at their end of file."""
    src.seek(src.tell())  # drops src's read buffer: the descriptor is where the copy starts
    dst.flush()
    copied = 0
    try:
        while n := os.copy_file_range(src.fileno(), dst.fileno(), _READ_CHUNK):
            copied += n
    except (AttributeError, OSError):  # no copy_file_range here, or not between these files
        if copied:
            raise
        shutil.copyfileobj(src, dst, 1 << 24)
    src.seek(0, os.SEEK_END)
    dst.seek(0, os.SEEK_END)
