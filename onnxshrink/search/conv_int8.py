"""Conv layers in static int8 for a ``--weight-bits`` search.

onnxruntime has low-bit kernels for MatMul/Gemm (``MatMulNBits``) and 2-D
Gather tables (``GatherBlockQuantized``), none for Conv: a weight-only Conv
weight loads as float32, so a Conv network shrunk with ``--weight-bits 4,8``
came back small on disk but with all of its float32 weights in memory and
its float32 speed (digits_resnet: 1.00x of fp32's weight bytes). With
calibration data the Conv layers can instead run in onnxruntime's integer
kernels as static int8 QDQ, their codes in the narrow range the widths ask
for (4 bits: [-7, 7], which pack about as small as 4-bit codes): on
digits_resnet 0.26x of the weight bytes at 0.32x fp32 latency (this AMD EPYC,
avx512_vnni). The search tries it as one more candidate and keeps it only when
it passes the gate and is measured faster and lighter (:mod:`onnxshrink.search.loop`).
"""

from __future__ import annotations

import dataclasses
import time

import onnx

from onnxshrink.search.quantizers import gate_passes
from onnxshrink.search.trial import SearchInputs, SearchState

# The op types onnxruntime runs on low-bit weights itself: left to the weight-only widths.
LOW_BIT_KERNEL_OPS = ("MatMul", "Gemm", "Gather")
# Ranges of the int8 codes tried, narrowest first (as shrink's static int8, onnxshrink.search.stages).
CONV_RANGE_BITS = (4, 6, 8)


@dataclasses.dataclass(frozen=True)
class Footprint:
    """What a model holds once loaded in its default form: ``share`` is its
    weight bytes over the original's, ``float_convs`` how many of its
    weight-only weights feed a Conv (and so load as float32)."""

    share: float
    float_convs: int

    @property
    def heavy(self) -> bool:
        """Above the default load form's memory share (a third of the original's weight bytes)
        because of Conv weights: its low-bit weights do not stay low-bit."""
        from onnxshrink.packing.forms import AUTO_MEMORY_SHARE

        return self.share > AUTO_MEMORY_SHARE and self.float_convs > 0


def footprint(model: onnx.ModelProto, original: onnx.ModelProto) -> Footprint:
    """``model``'s :class:`Footprint`, from one copy of it in its default load form."""
    from onnxshrink.model import data_bytes
    from onnxshrink.packing.forms import deployed_model

    loaded, forms = deployed_model(model)
    return Footprint(data_bytes(loaded) / max(data_bytes(original), 1),
                     sum(1 for f in forms if f.form == "float" and "Conv" in f.op_types))


def static_int8_convs(inputs: SearchInputs, state: SearchState, model: onnx.ModelProto, widths: tuple[int, ...]):
    """``model`` with its Conv layers (and the activations around them) in
    static int8 QDQ, MatMul/Gemm/Gather left float for the weight-only pass,
    at the narrowest code range from the smallest of ``widths`` up whose model
    alone passes the gate against the original (one preparation and
    calibration for every range: the search's ``quantize_cache``). Returns (QuantizeResult, range
    bits), or None when no range passes or time runs out."""
    from onnxshrink.quantization import QuantizeOptions, quantize_model

    settings = dict(inputs.options.recipe.quantize or {})
    exclude = tuple(dict.fromkeys(tuple(settings.pop("exclude_ops", ())) + LOW_BIT_KERNEL_OPS))
    ranges = [b for b in CONV_RANGE_BITS if b >= min(widths)] or [CONV_RANGE_BITS[-1]]
    for k, bits in enumerate(ranges):
        if k and state.deadline is not None and time.perf_counter() > state.deadline:
            return None
        options = QuantizeOptions(**{**settings, "weight_range_bits": bits}, exclude_ops=exclude, gate_floor=False,
                                  state=inputs.options.state)
        q = quantize_model(model, inputs.calib, options, eval_data=inputs.calib[:1], progress=inputs.progress,
                           measure_latency=False, cache=state.quantize_cache)
        if gate_passes(inputs, state, q.model):
            return q, bits
    return None
