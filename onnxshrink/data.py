"""Sample data for calibration and evaluation, streamed in batches.

The format every command takes: an ``.npz`` with one array per model input,
keyed by input name, samples along axis 0, and optionally ``labels`` (one int
per sample) and, for a stateful model's rows in time order, ``reset`` (one 0/1
per row: 1 where a new sequence starts). A folder of such files is read as
one stream, in name order.
Arrays are read batch by batch straight out of the zip member, so memory does
not grow with the number of samples.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol, Sequence

import numpy as np
import onnx

from onnxshrink.errors import DataError

LABELS = "labels"
# For stateful models (rows in time order): 1 where a new sequence (recording) starts,
# so the closed loop feeds that row's recorded state instead of carrying its own.
RESET = "reset"
# Refuse absurd declared shapes before allocating anything for them.
MAX_SAMPLE_BYTES = 1 << 30


@dataclasses.dataclass
class Batch:
    """One batch: model inputs by name, and labels and sequence starts
    (``reset``, one flag per sample) when the data has them."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    size: int | None = None  # set when the inputs do not share a leading batch axis
    reset: np.ndarray | None = None

    def __len__(self) -> int:
        """Samples in the batch: the first input's leading dim (a scalar input is one sample)."""
        if self.size is not None:
            return self.size
        if not self.inputs:
            return 0 if self.labels is None else len(self.labels)
        first = np.asarray(next(iter(self.inputs.values())))
        return int(first.shape[0]) if first.ndim else 1


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What the model expects for one input: element dtype and shape (None = symbolic)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]
    rank_known: bool = True  # False when the model declares no shape (then ``shape`` is ())

    @classmethod
    def from_value_info(cls, vi: onnx.ValueInfoProto) -> "InputSpec":
        tt = vi.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else np.dtype(np.float32)
        # Some exporters write dim_value -1 for a dynamic dim: symbolic, like a dim_param.
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None for d in tt.shape.dim)
        return cls(vi.name, np.dtype(dtype), shape, tt.HasField("shape"))

    def per_run(self, array_shape: Sequence[int]) -> bool:
        """Whether an array of ``array_shape`` holds one whole input per sample
        (one more axis than the input has: scalars, RNN states whose batch
        axis is not the first)."""
        return self.rank_known and len(array_shape) == len(self.shape) + 1


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (graph inputs that are not initializers)."""
    inits = {t.name for t in model.graph.initializer}
    return [InputSpec.from_value_info(vi) for vi in model.graph.input if vi.name not in inits]


class _NpyStream:
    """Reads one array of an .npz zip member a block of samples at a time."""

    def __init__(self, archive: zipfile.ZipFile, member: str, where: str):
        self.where = where
        self.handle = archive.open(member)
        try:
            version = np.lib.format.read_magic(self.handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(self.handle)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(self.handle)
        except Exception as e:
            raise DataError(f"{where}: not a readable numpy array ({e})") from None
        if dtype.hasobject:
            raise DataError(f"{where}: holds Python objects (dtype {dtype}); only numeric arrays are read")
        if not shape:
            raise DataError(f"{where}: is a scalar; expected samples along axis 0 (for a scalar input, one value per sample)")
        if fortran and len(shape) > 1:
            raise DataError(f"{where}: is stored in Fortran order; save it with np.ascontiguousarray")
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        self.sample_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * dtype.itemsize
        if self.sample_bytes > MAX_SAMPLE_BYTES:
            raise DataError(f"{where}: one sample would take {self.sample_bytes} bytes; refused")
        self.left = self.shape[0]

    def read(self, count: int) -> np.ndarray:
        count = min(count, self.left)
        raw = self.handle.read(count * self.sample_bytes)
        if len(raw) != count * self.sample_bytes:
            raise DataError(f"{self.where}: the array is truncated")
        self.left -= count
        return np.frombuffer(raw, dtype=self.dtype).reshape((count,) + self.shape[1:])


class NpzData:
    """An .npz file, or a folder of them, as a stream of batches.

    Construction reads only the array headers; :meth:`batches` checks each
    batch against the model's inputs (names, dtype, shape, finite values).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_dir():
            self.files = sorted(p for p in self.path.iterdir() if p.suffix == ".npz")
            if not self.files:
                raise DataError(f"{self.path}: folder holds no .npz files")
        elif self.path.is_file():
            self.files = [self.path]
        else:
            raise DataError(f"{self.path}: no such data file")
        self.arrays: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self.num_samples = 0
        for file in self.files:
            with self._open(file) as archive:
                names = self._members(archive, file)
                counts = set()
                for name, member in names.items():
                    stream = _NpyStream(archive, member, f"{file}:{name}")
                    counts.add(stream.shape[0])
                    self.arrays.setdefault(name, (stream.shape, stream.dtype))
                if len(counts) > 1:
                    raise DataError(f"{file}: arrays hold different numbers of samples ({sorted(counts)}) along axis 0; "
                                    "for inputs whose batch axis is not the first, add a leading sample axis")
                self.num_samples += counts.pop() if counts else 0
        if self.num_samples == 0:
            raise DataError(f"{self.path}: holds no samples")

    @staticmethod
    def _open(file: Path) -> zipfile.ZipFile:
        try:
            return zipfile.ZipFile(file)
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"{file}: not an .npz file ({e})") from None

    @staticmethod
    def _members(archive: zipfile.ZipFile, file: Path) -> dict[str, str]:
        members = {}
        for info in archive.infolist():
            if info.filename.endswith(".npy"):
                members[info.filename[: -len(".npy")]] = info.filename
        if not members:
            raise DataError(f"{file}: holds no arrays")
        return members

    @property
    def has_labels(self) -> bool:
        return LABELS in self.arrays

    def _markers(self, specs: Sequence[InputSpec]) -> list[str]:
        """The arrays read beside the inputs: labels and sequence starts (unless a model input has that name)."""
        inputs = {s.name for s in specs}
        return [n for n in (LABELS, RESET) if n in self.arrays and n not in inputs]

    def check_against(self, specs: Sequence[InputSpec]) -> None:
        """Refuse data that lacks an input or whose dtype or shape cannot fit."""
        for spec in specs:
            if spec.name not in self.arrays:
                have = ", ".join(sorted(self.arrays)) or "none"
                raise DataError(f"{self.path}: no array for model input '{spec.name}' (arrays: {have})")
            shape, dtype = self.arrays[spec.name]
            if dtype != spec.dtype:
                raise DataError(
                    f"{self.path}: array '{spec.name}' is {dtype}, the model input needs {spec.dtype} "
                    f"(convert it with .astype(np.{spec.dtype.name}))"
                )
            _check_shape(spec, shape, str(self.path))
        if self.has_labels:
            shape, dtype = self.arrays[LABELS]
            if dtype.kind not in "iu" or len(shape) != 1:
                raise DataError(f"{self.path}: 'labels' must be a 1-D integer array, got {dtype} {shape}")
        if RESET in self._markers(specs):
            shape, dtype = self.arrays[RESET]
            if dtype.kind not in "biu" or len(shape) != 1:
                raise DataError(f"{self.path}: 'reset' must be a 1-D array of 0/1 (one per row), got {dtype} {shape}")

    def batches(self, specs: Sequence[InputSpec], batch_size: int = 32) -> Iterator[Batch]:
        """Yield batches of the inputs named in ``specs`` (and labels, if present)."""
        self.check_against(specs)
        names = [s.name for s in specs]
        fixed = {s.name: s.shape[0] for s in specs if s.shape and s.shape[0] is not None}
        if fixed:
            batch_size = min(batch_size, min(fixed.values()))
        # Arrays with one more axis than their input hold a whole input per
        # sample: then every run takes one sample, those arrays without that axis.
        per_run = {s.name for s in specs if s.per_run(self.arrays[s.name][0])}
        if per_run:
            batch_size = 1
        markers = self._markers(specs)
        wanted = names + markers
        for file in self.files:
            with self._open(file) as archive:
                members = self._members(archive, file)
                streams = {n: _NpyStream(archive, members[n], f"{file}:{n}") for n in wanted if n in members}
                missing = [n for n in wanted if n not in streams]
                if missing:
                    raise DataError(f"{file}: no array for '{missing[0]}'")
                left = next(iter(streams.values())).left
                while left > 0:
                    step = min(batch_size, left)
                    arrays = {n: streams[n].read(step) for n in wanted}
                    left -= step
                    labels = arrays.pop(LABELS, None) if LABELS in markers else None
                    reset = arrays.pop(RESET, None) if RESET in markers else None
                    for n, a in arrays.items():
                        if a.dtype.kind in "fc" and not np.isfinite(a).all():
                            raise DataError(f"{file}: array '{n}' holds NaN or Inf values")
                    if per_run:
                        arrays = {n: a[0] if n in per_run else a for n, a in arrays.items()}
                    # (ascontiguousarray would turn a 0-d array into 1-d)
                    yield Batch({n: np.ascontiguousarray(a).reshape(a.shape) for n, a in arrays.items()}, labels,
                                step if per_run else None, None if reset is None else reset.astype(bool))


def _check_shape(spec: InputSpec, shape: tuple[int, ...], where: str) -> None:
    if spec.per_run(shape):  # one whole input per sample: compare everything after the sample axis
        have_dims, want_dims = shape[1:], spec.shape
    else:
        have_dims, want_dims = shape[1:], spec.shape[1:]
        if spec.rank_known and len(spec.shape) != len(shape):
            raise DataError(
                f"{where}: array '{spec.name}' has shape {list(shape)} (samples first); the model input is "
                f"{_shape_text(spec.shape)}: give it that shape, or one more leading axis for one whole input per sample"
            )
    for have, want in zip(have_dims, want_dims):
        if want is not None and want > 0 and have != want:
            raise DataError(
                f"{where}: array '{spec.name}' has shape {list(shape)}; the model input is {_shape_text(spec.shape)}"
            )


def _shape_text(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


class CalibrationReader(Protocol):
    """onnxruntime's CalibrationDataReader shape: ``get_next()`` returns a feed dict or None."""

    def get_next(self) -> Mapping[str, np.ndarray] | None: ...


def batches_from_reader(reader: CalibrationReader) -> Iterator[Batch]:
    """Adapt an onnxruntime-style data reader to our batches."""
    while True:
        feed = reader.get_next()
        if feed is None:
            return
        yield Batch({k: np.asarray(v) for k, v in feed.items()})


def synthetic_batches(
    specs: Sequence[InputSpec], shapes: Mapping[str, Sequence[int]] | None = None, count: int = 8, seed: int = 0
) -> Iterator[Batch]:
    """Random inputs made from the declared shapes (symbolic dims from ``shapes``
    or 1): a check of numerical fidelity only, not of task accuracy."""
    rng = np.random.default_rng(seed)
    shapes = dict(shapes or {})
    for _ in range(count):
        inputs = {}
        for spec in specs:
            dims = list(shapes.get(spec.name, [d if d is not None and d > 0 else 1 for d in spec.shape]))
            if int(np.prod(dims, dtype=object)) * spec.dtype.itemsize > MAX_SAMPLE_BYTES:
                raise DataError(f"input '{spec.name}' declares shape {dims}, too large for random inputs; "
                                "give real data with --data or smaller dims with --shape")
            if spec.dtype.kind == "f":
                inputs[spec.name] = rng.standard_normal(dims).astype(spec.dtype)
            elif spec.dtype.kind == "b":
                inputs[spec.name] = rng.random(dims) < 0.5
            elif spec.dtype.kind in "iu":
                inputs[spec.name] = rng.integers(0, 4, size=dims).astype(spec.dtype)
            else:
                raise DataError(f"input '{spec.name}' has dtype {spec.dtype}; give real data with --data")
        yield Batch(inputs)


def read_samples(source: Any, specs: Sequence[InputSpec], limit: int, batch_size: int = 32) -> list[Batch]:
    """Up to ``limit`` samples of ``source`` as a list of batches, for passes that
    read their calibration data more than once. Raises DataError when there are none."""
    batches: list[Batch] = []
    have = 0
    for batch in iter_batches(source, specs, batch_size):
        take = min(len(batch), limit - have)
        if take < len(batch):
            batch = Batch({k: v[:take] for k, v in batch.inputs.items()},
                          None if batch.labels is None else batch.labels[:take],
                          reset=None if batch.reset is None else batch.reset[:take])
        batches.append(batch)
        have += take
        if have >= limit:
            break
    if not batches:
        raise DataError("the calibration data holds no samples")
    return batches


def iter_batches(source: Any, specs: Sequence[InputSpec], batch_size: int = 32) -> Iterator[Batch]:
    """Batches from a path, an NpzData, an ORT-style reader, or an iterable of Batch/dicts."""
    if isinstance(source, (str, os.PathLike)):
        source = NpzData(source)
    if isinstance(source, NpzData):
        yield from source.batches(specs, batch_size)
    elif hasattr(source, "get_next"):
        yield from batches_from_reader(source)
    else:
        for item in source:
            yield item if isinstance(item, Batch) else Batch(dict(item))
