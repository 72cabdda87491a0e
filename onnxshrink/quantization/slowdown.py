"""Why a quantized model runs slower than its fp32 original: measured, not guessed.

When the quantized model is slower (one thread), both models run once more
under onnxruntime's profiler on the same input and their time is split by
kernel: conversions (QuantizeLinear, DequantizeLinear), integer kernels
(QLinear*, *Integer*, QGemm ...) and float kernels. The warning names what
the measurement and the CPU show, in this order:

* an x86 CPU without VNNI (neither ``avx512_vnni`` nor ``avx_vnni`` among the
  flags of /proc/cpuinfo): onnxruntime's u8 x s8 kernels are then slow,
  and the same model is expected to run faster on a VNNI or ARM CPU;
* where the time goes, per kind of kernel, against the fp32 model's: the
  conversions between float and int8 around ops that have no integer kernel
  and integer kernels slower than the float ones they replace (a PaddleOCR
  classifier on a VNNI CPU: 4.4 ms of Q/DQ around the Add/Clip/Div/Mul of its
  hard-swish activations, 5.8 ms of depthwise QLinearConv against 1.7 ms of
  fp32 Conv).
"""

from __future__ import annotations

import collections
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

CONVERSIONS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
# Profiling holds both models serialized and in onnxruntime at once: above this many bytes
# of weights (both together) it is skipped, so large models keep their peak-memory bound.
PROFILE_MAX_BYTES = 128 << 20
RUNS = 10


def cpu_flags(path: str | os.PathLike = "/proc/cpuinfo") -> frozenset[str] | None:
    """The x86 feature flags of this CPU, or None when unknown (not Linux, or not x86)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return None


def lacks_vnni(flags: frozenset[str] | None) -> bool:
    """True on an x86 CPU whose flags name no VNNI (the int8 dot-product instructions)."""
    return flags is not None and not ({"avx512_vnni", "avx_vnni"} & flags)


def kernel_kind(op_name: str) -> str:
    """'conversion', 'integer' or 'float' for an onnxruntime kernel's op name."""
    if op_name in CONVERSIONS:
        return "conversion"
    if op_name.startswith("QLinear") or "Integer" in op_name or op_name in ("QGemm", "QAttention", "MatMulNBits",
                                                                             "DynamicQuantizeMatMul") \
            or op_name.startswith("NhwcQLinear"):
        return "integer"
    return "float"


def profile_ms(models: list[onnx.ModelProto], feed: dict[str, np.ndarray],
               runs: int = RUNS) -> list[dict[str, float]] | None:
    """Mean milliseconds per run spent in each op type (one thread) of each model,
    their runs interleaved so that a change in the machine's load hits both alike;
    None when a model is too large to profile or onnxruntime cannot run it."""
    from onnxshrink.model import data_bytes

    if sum(data_bytes(m) for m in models) > PROFILE_MAX_BYTES:
        return None
    with tempfile.TemporaryDirectory(prefix="onnxshrink-profile-") as folder:
        sessions = []
        try:
            for k, model in enumerate(models):
                blob = model.SerializeToString()
                options = ort.SessionOptions()
                options.intra_op_num_threads = 1
                options.inter_op_num_threads = 1
                options.log_severity_level = 4
                options.enable_profiling = True
                options.profile_file_prefix = str(Path(folder) / f"model{k}")
                sessions.append(ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"]))
                del blob
            for _ in range(runs + 1):
                for session in sessions:
                    session.run(None, feed)
            traces = [json.loads(Path(session.end_profiling()).read_text()) for session in sessions]
        except Exception:  # the profile is advice (over protobuf's limit, a run that fails): without it, say less
            return None
    return [_per_op(events, runs) for events in traces]


def _per_op(events: list[dict], runs: int) -> dict[str, float]:
    # The first run (allocations, kernel set-up) is left out.
    starts = sorted(float(e.get("ts", 0)) for e in events if e.get("name") == "model_run")
    after = starts[1] if len(starts) > 1 else 0.0
    per_op: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time") \
                and float(event.get("ts", 0)) >= after:
            per_op[event.get("args", {}).get("op_name", "?")] += float(event.get("dur", 0))
    return {op: us / 1000.0 / runs for op, us in per_op.items()}


def _top(ms: dict[str, float], kind: str, n: int = 2) -> str:
    ops = sorted(((t, op) for op, t in ms.items() if kernel_kind(op) == kind), reverse=True)[:n]
    return ", ".join(f"{op} {t:.2f} ms" for t, op in ops)


def slowdown_warning(reference: onnx.ModelProto, candidate: onnx.ModelProto, feed: dict[str, np.ndarray] | None,
                     latency: dict[str, Any], what: str = "int8") -> str | None:
    """A warning naming the likely causes when ``candidate`` ran slower than
    ``reference`` in ``latency`` (validation's medians), else None."""
    ref_ms, cand_ms = latency.get("reference"), latency.get("candidate")
    if not ref_ms or not cand_ms or cand_ms <= ref_ms:
        return None
    head = f"the {what} model is slower than fp32 on this CPU ({cand_ms:.3f} ms vs {ref_ms:.3f} ms, 1 thread)"
    causes = []
    flags = cpu_flags()
    if lacks_vnni(flags):
        causes.append("this CPU has no VNNI (neither avx512_vnni nor avx_vnni in /proc/cpuinfo), where onnxruntime's "
                      "int8 kernels are slow; on a VNNI or ARM CPU the same model is expected to be faster")
    profiles = profile_ms([reference, candidate], feed) if feed is not None else None
    ref, cand = profiles if profiles else (None, None)
    if cand and ref:
        parts = []
        for kind, label in (("conversion", "float<->int8 conversions"), ("integer", "integer kernels"),
                            ("float", "float kernels")):
            ms = sum(t for op, t in cand.items() if kernel_kind(op) == kind)
            if ms > 0:
                parts.append(f"{label} {ms:.2f} ms ({_top(cand, kind, 3)})")
        causes.append(f"profiled per run, its kernels take {sum(cand.values()):.2f} ms against "
                      f"{sum(ref.values()):.2f} ms in fp32 ({_top(ref, 'float', 3)}): " + ", ".join(parts))
    elif not causes:
        causes.append("the kernels were not profiled (no input to run, or models over "
                      f"{PROFILE_MAX_BYTES >> 20} MiB of weights together)")
    return head + ": " + "; ".join(causes)


def one_input(model: onnx.ModelProto, data: Any, shapes: dict | None = None) -> dict[str, np.ndarray] | None:
    """One sample to profile on: the first of ``data`` when it can be read again
    (a path, NpzData, list or tuple), else random inputs from the declared shapes."""
    from onnxshrink.data import NpzData, iter_batches, model_inputs, synthetic_batches
    from onnxshrink.runtime import first_sample

    specs = model_inputs(model)
    try:
        if isinstance(data, (str, os.PathLike, NpzData, list, tuple)):
            batch = next(iter(iter_batches(data, specs, 1)), None)
        else:
            batch = next(iter(synthetic_batches(specs, shapes, count=1)), None)
    except Exception:  # the data was already checked by validation; this is advice
        return None
    return None if batch is None else first_sample(batch, specs)
