"""The exceptions onnxshrink raises on purpose.

Every error a user can cause (a bad file, a bad option, data that does not fit
the model) is an :class:`OnnxShrinkError` carrying a one-line message and the
exit code the command line uses for it: 2 for bad usage or input, 1 for a
quality gate that failed. Anything else escaping the library is a bug.
"""

from __future__ import annotations


class OnnxShrinkError(Exception):
    """Base class: a one-line, user-facing message and an exit code."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: the CLI prints exactly this.
        super().__init__(" ".join(str(message).split()))

    @property
    def message(self) -> str:
        return str(self)


class UsageError(OnnxShrinkError):
    """Options that contradict each other or are out of range."""


class ModelLoadError(OnnxShrinkError):
    """A model file that is missing, empty, truncated, corrupt or not ONNX."""


class UnsafeModelError(ModelLoadError):
    """A model whose external data would read or write outside its folder, or
    declares keys, offsets or lengths that cannot be trusted."""


class UnsupportedModelError(OnnxShrinkError):
    """A well-formed model using a construct a pass cannot handle."""


class DataError(OnnxShrinkError):
    """A data file (.npz) that does not fit the model: missing inputs, wrong
    dtype or shape, non-finite values, no samples."""


class PackError(OnnxShrinkError):
    """A packed container that is corrupt, truncated, of an unknown version or
    codec, or that declares sizes beyond the container's limits."""


class GateFailed(OnnxShrinkError):
    """A quality gate (cosine, accuracy drop, ...) did not hold."""

    exit_code = 1


class OutputError(OnnxShrinkError):
    """An output that cannot be written: its folder missing or read-only,
    the path a folder, the disk full."""
