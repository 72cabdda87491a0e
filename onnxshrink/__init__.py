"""onnxshrink: a framework-neutral ONNX model compressor.

The public API (every function leaves its input model unchanged)::

    load(path)                   -> onnx.ModelProto   (.onnx, or a packed .onnxz)
    save(model, path)            atomic; external data beside it when large
    inspect(model_or_path)       -> ModelInfo
    validate(reference, candidate, data=..., gate=Gate(...)) -> ValidationReport
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import onnx

from onnxshrink.errors import (
    DataError,
    GateFailed,
    ModelLoadError,
    OnnxShrinkError,
    PackError,
    UnsafeModelError,
    UnsupportedModelError,
    UsageError,
)
from onnxshrink.model import load_model, save_model

from onnxshrink.summary import ModelInfo, inspect_model
from onnxshrink.validation import Gate, ValidationReport, compare_models

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Option and result types of the passes, imported on first use so that
    loading a packed model needs only numpy, onnx and onnxruntime."""
    lazy = {
        "QuantizeOptions": "onnxshrink.quantization",
        "CalibrationStats": "onnxshrink.quantization",
        "PruneOptions": "onnxshrink.pruning",
        "PackOptions": "onnxshrink.packing",
        "ShrinkOptions": "onnxshrink.pipeline",
    }
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(f"module 'onnxshrink' has no attribute {name!r}")


def _packed_reader():
    """The packed-container reader, if this install has it."""
    try:
        from onnxshrink.packing import is_packed_file, load_packed
    except ImportError:
        return None, None
    return is_packed_file, load_packed


def load(path: str | os.PathLike, **options: Any) -> onnx.ModelProto:
    """Load an ONNX model, or restore one from a packed ``.onnxz`` container."""
    is_packed_file, load_packed = _packed_reader()
    if is_packed_file is not None and Path(path).is_file() and is_packed_file(path):
        return load_packed(path, **options)
    if options:
        raise UsageError(f"options {sorted(options)} apply to packed models only")
    return load_model(path)


def save(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Save ``model`` atomically (external data beside it when over ~1.8 GB)."""
    save_model(model, path)


def _model(model_or_path: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    return model_or_path if isinstance(model_or_path, onnx.ModelProto) else load(model_or_path)


def inspect(model: onnx.ModelProto | str | os.PathLike) -> ModelInfo:
    """Summarise a model: opsets, I/O, parameters, bytes by op and tensor, sparsity."""
    return inspect_model(_model(model))


def validate(reference: Any, candidate: Any, data: Any = None, **options: Any) -> ValidationReport:
    """Compare ``candidate`` against ``reference`` in onnxruntime; see
    :func:`onnxshrink.validation.compare_models` for the options."""
    return compare_models(reference, candidate, data, **options)


def pack(model: onnx.ModelProto | str | os.PathLike, path: str | os.PathLike | None = None, **options: Any):
    """Pack a model losslessly; returns the PackResult (container bytes and report),
    and writes it atomically to ``path`` when given."""
    from onnxshrink.packing import PackOptions, pack_model, write_packed

    result = pack_model(_model(model), PackOptions(**options))
    if path is not None:
        write_packed(result, path)
    return result


def unpack(path: str | os.PathLike, output: str | os.PathLike | None = None,
           materialize: str = "auto") -> onnx.ModelProto:
    """Restore a packed model in the form it runs fastest in; saves it to
    ``output`` when given. ``materialize="auto"`` (default) puts weight-only
    4/8-bit MatMul/Gemm/Gather layers on onnxruntime's low-bit kernels
    (MatMulNBits, GatherBlockQuantized), other weight-only weights in float32
    and keeps static int8 QDQ; ``"native"``, ``"float"``, and ``"qdq"`` (the
    model exactly as packed, bit-exact) choose one form (see
    :func:`onnxshrink.packing.load_packed`)."""
    from onnxshrink.packing import load_packed

    model = load_packed(path, materialize=materialize)
    if output is not None:
        save_model(model, output)
    return model


def session(path: str | os.PathLike, **options: Any):
    """An onnxruntime InferenceSession for a packed .onnxz file (path or bytes), built in memory.
    Weight-only quantized layers run on onnxruntime's low-bit kernels or as
    float32, whichever ``materialize="auto"`` picks, unless another
    ``materialize`` is given (see :func:`onnxshrink.packing.inference_session_from_packed`)."""
    from onnxshrink.packing import inference_session_from_packed

    return inference_session_from_packed(path, **options)


def quantize(model: onnx.ModelProto | str | os.PathLike, calib: Any = None, options: Any = None, **kwargs: Any):
    """int8 QDQ quantization; see :func:`onnxshrink.quantization.quantize_model`.
    Returns a QuantizeResult (``.model``, ``.report``); the input is not changed."""
    from onnxshrink.quantization import QuantizeOptions, quantize_model

    return quantize_model(_model(model), calib, options or QuantizeOptions(), **kwargs)


def prune(model: onnx.ModelProto | str | os.PathLike, options: Any = None, **kwargs: Any):
    """Pruning; see :func:`onnxshrink.pruning.prune_model`. Returns a PruneResult
    (``.model``, ``.report``); the input is not changed."""
    from onnxshrink.pruning import PruneOptions, prune_model

    if options is None:
        raise UsageError("give PruneOptions(sparsity=...) or a target")
    return prune_model(_model(model), options if isinstance(options, PruneOptions) else PruneOptions(**options), **kwargs)


def shrink(model: onnx.ModelProto | str | os.PathLike, calib: Any, *, recipe: str = "auto", eval_data: Any = None,
           gate: Gate = Gate(), target_ratio: float | None = None, max_latency_ratio: float | None = None,
           **kwargs: Any):
    """The whole pipeline; see :func:`onnxshrink.pipeline.shrink`. Returns a
    ShrinkResult (``.model``, ``.packed`` bytes, ``.report`` with its
    ``latency``, ``.validation``). ``max_latency_ratio`` bounds the output's
    latency in its default load form over the original's (1 thread, batch 1)."""
    from onnxshrink.pipeline import ShrinkOptions, shrink as run_pipeline
    from onnxshrink.recipes import load_recipe, recipe_for

    source = _model(model)
    options = ShrinkOptions(recipe=load_recipe(recipe_for(source) if recipe == "auto" else recipe), gate=gate,
                            target_ratio=target_ratio, max_latency_ratio=max_latency_ratio)
    return run_pipeline(source, calib, options, eval_data=eval_data, **kwargs)


__all__ = [
    "CalibrationStats",
    "PackOptions",
    "PruneOptions",
    "QuantizeOptions",
    "ShrinkOptions",
    "DataError",
    "Gate",
    "GateFailed",
    "ModelInfo",
    "ModelLoadError",
    "OnnxShrinkError",
    "PackError",
    "UnsafeModelError",
    "UnsupportedModelError",
    "UsageError",
    "ValidationReport",
    "inspect",
    "load",
    "pack",
    "prune",
    "quantize",
    "save",
    "shrink",
    "session",
    "unpack",
    "validate",
]
