"""Output files: written whole or not at all, and never by replacing what is not a file.

:func:`atomic_output` yields a temporary file to write; when the block ends
the temporary becomes the output, as :func:`destination` decides from what is
at the output path now:

- nothing, or a regular file: the temporary is made in the same folder and
  renamed onto the path (atomic on POSIX: a reader sees the old file or the
  new one, never half of one);
- a symlink (to a regular file, or dangling): it is followed, the temporary
  is made beside the file it points to and renamed onto that file, so the
  link stays a link;
- an existing file that is not a regular file (a device such as the null
  device, a FIFO, the terminal): it is written through, opened and written,
  never replaced by a regular file;
- ``-``: standard output.

Inside :func:`outputs_together` the temporaries become final only when the
block ends, all of them, so a command that writes several outputs leaves all
of them or none.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import errno
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from onnxshrink.errors import OutputError

STDOUT = "-"
# Writing failures that are the machine's state, not a bug: reported as an OutputError.
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


@dataclasses.dataclass(frozen=True)
class Destination:
    """Where an output's bytes end up.

    ``kind`` is ``"file"`` (a temporary renamed onto ``path``, which for a
    symlink is the file it points to), ``"through"`` (an existing file that
    is not a regular file, opened and written) or ``"stdout"``.
    """

    kind: str
    path: Path


def destination(path: str | os.PathLike) -> Destination:
    """How an output at ``path`` is written (see the module docstring)."""
    if str(path) == STDOUT:
        return Destination("stdout", Path(STDOUT))
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except OSError:  # nothing there (or a dangling link, or a path under a file)
        mode = None
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        return Destination("through", p)
    if p.is_symlink():
        return Destination("file", Path(os.path.realpath(p)))
    return Destination("file", p)


@dataclasses.dataclass
class _Pending:
    """A written temporary and the output it becomes."""

    tmp: Path
    where: Destination
    name: str

    def commit(self) -> None:
        try:
            if self.where.kind == "file":
                os.chmod(self.tmp, 0o644)
                os.replace(self.tmp, self.where.path)
            elif self.where.kind == "stdout":
                sys.stdout.flush()
                with open(self.tmp, "rb") as src:
                    shutil.copyfileobj(src, sys.stdout.buffer)
                sys.stdout.buffer.flush()
            else:
                # O_WRONLY without O_CREAT: a device or FIFO is written, never made.
                with open(self.tmp, "rb") as src, os.fdopen(os.open(self.where.path, os.O_WRONLY), "wb") as out:
                    shutil.copyfileobj(src, out)
        except OSError as e:
            raise OutputError(f"{self.name}: cannot write ({e.strerror or e})") from None
        finally:
            self.discard()

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.tmp.unlink()


# The outputs of the innermost outputs_together block, made final when it ends.
_together: contextvars.ContextVar[list[_Pending] | None] = contextvars.ContextVar("onnxshrink_outputs", default=None)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path; it becomes the output at ``path`` when the
    block succeeds (or, inside :func:`outputs_together`, when that block
    does) and is deleted when the block raises or is interrupted.

    The temporary lives in the folder of the file it replaces, so the final
    rename is atomic; for outputs written through (devices, FIFOs, standard
    output) it lives in the system's temporary folder. A missing folder is
    made. Raises OutputError when the folder cannot be made or written, or
    the disk is full.
    """
    where = destination(path)
    folder = where.path.parent if where.kind == "file" else Path(tempfile.gettempdir())
    name = where.path.name if where.kind == "file" else "output"
    try:
        # The API makes a missing folder (the command line refuses one before any work).
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix + ".tmp", dir=folder)
    except OSError as e:
        raise OutputError(f"{path}: cannot write in {folder} ({e.strerror})") from None
    os.close(fd)
    pending = _Pending(Path(tmp), where, str(path))
    try:
        yield pending.tmp
    except OSError as e:
        pending.discard()
        if e.errno in _FULL:
            raise OutputError(f"{path}: cannot write ({e.strerror})") from None
        raise
    except BaseException:
        pending.discard()
        raise
    batch = _together.get()
    if batch is None:
        pending.commit()
    else:
        batch.append(pending)


@contextlib.contextmanager
def outputs_together() -> Iterator[None]:
    """Outputs written with :func:`atomic_output` inside the block become
    final together when it ends, or not at all when it raises.

    Streams (standard output, devices) are written first, then the files
    are renamed in the order they were written (a model's data file before
    the model that refers to it). Nested blocks belong to the outermost.
    """
    if _together.get() is not None:
        yield
        return
    batch: list[_Pending] = []
    token = _together.set(batch)
    try:
        yield
    except BaseException:
        for pending in batch:
            pending.discard()
        raise
    finally:
        _together.reset(token)
    ordered = [p for p in batch if p.where.kind != "file"] + [p for p in batch if p.where.kind == "file"]
    for i, pending in enumerate(ordered):
        try:
            pending.commit()
        except BaseException:
            for rest in ordered[i + 1:]:
                rest.discard()
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
