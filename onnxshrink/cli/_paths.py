"""The files a command reads and writes, checked before any work starts.

Each command declares its inputs (by the argument or flag that names them)
and its outputs; :func:`check_files` refuses, with one line naming both
paths (exit 2):

- an output that is one of the inputs by any spelling: the same resolved
  path (``./`` variants, symlinks) or the same device and inode (hard
  links); for a data folder, any ``.npz`` in it; for an input model, its
  external-data files; and for a model output, the ``<output>.data`` file
  saved beside a large model;
- two outputs that are the same file;
- an output that cannot be written: its folder missing (not created, as
  ``cp`` does), not a folder, or not writable; the output itself a folder;
  ``-`` (standard output) for an output that is not a report.

An existing output that is not a regular file (a device, a FIFO) is written
through, and ``-`` is standard output (see :mod:`onnxshrink.fileio`); the
summary a command prints then goes to stderr, so stdout holds only the report.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping, Sequence

from onnxshrink.errors import UsageError
from onnxshrink.fileio import STDOUT, destination

# Outputs that may be standard output: reports, not models.
STREAMABLE = ("--json", "--report")


@dataclasses.dataclass(frozen=True)
class _File:
    """A path as a command names it, and what identifies the file behind it."""

    label: str
    path: Path
    real: str
    inode: tuple[int, int] | None

    @classmethod
    def of(cls, label: str, path: Path) -> "_File":
        try:
            st = os.stat(path)
            inode = (st.st_dev, st.st_ino)
        except OSError:
            inode = None
        return cls(label, path, os.path.realpath(path), inode)

    def same(self, other: "_File") -> bool:
        return self.real == other.real or (self.inode is not None and self.inode == other.inode)

    def __str__(self) -> str:
        return f"{self.label} {self.path}"


def check_files(inputs: Mapping[str, str | os.PathLike | None], outputs: Mapping[str, str | os.PathLike | None], *,
                models: Sequence[str] = ("MODEL",), model_outputs: Sequence[str] = ("-o",)) -> bool:
    """Refuse (UsageError) outputs that would write over an input or each
    other, or that cannot be written; ``None`` entries are options not given.

    ``models``: the input labels that are ONNX models (their external-data
    files are inputs too); ``model_outputs``: the output labels a model is
    saved to (a large one gets ``<path>.data`` beside it). Returns whether
    an output is standard output.
    """
    given = {label: Path(p) for label, p in outputs.items() if p is not None}
    to_stdout = False
    for label, path in given.items():
        if str(path) == STDOUT:
            if label not in STREAMABLE:
                raise UsageError(f"{label} -: only reports ({', '.join(STREAMABLE)}) can go to standard output; "
                                 "give a file path")
            to_stdout = True
    files = [_File.of(label, path) for label, path in given.items()]
    # A model too large for one protobuf is saved with its data in <output>.data.
    beside = [_File.of(f"{label} {given[label]}: its data file", Path(str(given[label]) + ".data"))
              for label in model_outputs if label in given and str(given[label]) != STDOUT]
    _refuse_same_outputs(files, beside)
    written = [out for out in files + beside if str(out.path) != STDOUT]
    sources = _input_files(inputs)
    for out in written:
        for source in sources:
            if out.same(source):
                raise UsageError(f"{out} would overwrite the input {source} (the same file); choose another path")
    existing = [out for out in written if out.inode is not None]
    for label in models:
        model = inputs.get(label)
        if model is not None and existing:
            for data in _external_data_files(Path(model), existing):
                for out in existing:
                    if out.same(data):
                        raise UsageError(f"{out} would overwrite {label} {model}'s external data file {data.path}; "
                                         "choose another path")
    for out in files:
        if str(out.path) != STDOUT:
            _refuse_unwritable(out)
    return to_stdout


def _refuse_same_outputs(files: list[_File], beside: list[_File]) -> None:
    for i, a in enumerate(files):
        for b in files[i + 1:]:
            if a.same(b) or str(a.path) == str(b.path) == STDOUT:
                raise UsageError(f"{a} and {b} are the same file; give each output its own path")
        for b in beside:
            if str(a.path) != STDOUT and a.same(b):
                raise UsageError(f"{a} is {b}; give each output its own path")


def _input_files(inputs: Mapping[str, str | os.PathLike | None]) -> list[_File]:
    """The existing input files (a missing one is the command's own error to
    report), a data folder's .npz files among them."""
    found = []
    for label, p in inputs.items():
        if p is None or not os.path.exists(p):
            continue
        path = Path(p)
        found.append(_File.of(label, path))
        if path.is_dir():
            found += [_File.of(label, f) for f in sorted(path.iterdir()) if f.is_file()]
    return found


def _external_data_files(model: Path, outputs: list[_File]) -> list[_File]:
    """The external-data files ``model`` names, as far as they could be one of
    ``outputs``: only outputs in the model's folder (external data never lies
    outside it) whose file name appears in the model's bytes (a location
    names the file) can be, and only then is the protobuf parsed."""
    import mmap

    import onnx

    from onnxshrink.model import all_tensors

    folder = os.path.realpath(model.parent)
    near = [out for out in outputs if os.path.commonpath([out.real, folder]) == folder]
    if not near or not model.is_file() or model.stat().st_size == 0:
        return []
    try:
        with open(model, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as blob:
            if not any(blob.find(os.path.basename(out.real).encode()) >= 0 for out in near):
                return []
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:  # unreadable, not ONNX, or packed: the command's own load reports it
        return []
    names = {e.value for t, _ in all_tensors(proto) if t.data_location == onnx.TensorProto.EXTERNAL
             for e in t.external_data if e.key == "location"}
    return [_File.of(f"{model}'s external data", model.parent / name) for name in sorted(names)]


def _refuse_unwritable(out: _File) -> None:
    """An output whose folder is missing, is not a folder or is read-only, or
    that is itself a folder; an existing device or FIFO must be writable."""
    where = destination(out.path)
    if where.kind == "through":
        if not os.access(out.path, os.W_OK):
            raise UsageError(f"{out}: not writable")
        return
    target = where.path
    if target.is_dir():
        raise UsageError(f"{out}: is a folder; give a file path")
    folder = target.parent
    if not folder.is_dir():
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise UsageError(f"{out}: {blocker} is a file, not a folder")
        raise UsageError(f"{out}: no such folder {folder} (create it first)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{out}: cannot write in folder {folder} (permission denied or read-only)")
