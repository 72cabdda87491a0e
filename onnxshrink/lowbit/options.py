"""What a weight-only quantization run is asked to do: one frozen dataclass."""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Mapping

from onnxshrink.errors import UsageError
from onnxshrink.lowbit.grid import storage_bits

# 7, 6 and 5: fewer levels stored as int8 codes, 3 and 2 as int4 codes (entropy coding packs them smaller;
# they load on the same kernels as 8 and 4 bits)
BITS = (8, 7, 6, 5, 4, 3, 2)
ROUNDINGS = ("nearest", "gptq")
GRANULARITIES = ("auto", "channel", "block:N")
_BLOCK = re.compile(r"^block:(\d+)$")
# "auto": below 8 bits, MatMul/Gemm weights and Gather tables get blocks of AUTO_BLOCK along
# their input (embedding) axis, Conv weights one scale per output channel; at 8 bits every
# weight gets per-channel scales. Measured on all-MiniLM-L6-v2 (sentence-embedding cosine to
# fp32 on 32 sentences, file size): int4 per channel 0.889 (0.129x), block:128 0.932, block:64
# 0.945, block:32 0.955 (0.162x), block:16 0.968 (0.197x); int8 per channel 0.9993 (0.254x),
# block:32 0.9997 (0.291x). 32 is the block of onnxruntime's MatMulNBits and a valid
# GatherBlockQuantized block. Conv: per-channel scales run as one per filter (docs/lowbit.md).
AUTO_BLOCK = 32
AUTO_BLOCK_OPS = frozenset({"MatMul", "Gemm", "Gather"})
# ... but only over more input features than this: a channel of at most 128 is already a short
# block. digits_transformer (K = 64, 128) at 4 bits, pruned alike: per channel loses 9 of 1080
# eval samples, block:32 7, both within a 1-point gate, and per channel's scales take half the
# bytes (shrink --weight-bits 4,8: 8.1x against 7.6x).
AUTO_BLOCK_MIN_FEATURES = 128


def parse_granularity(text: str) -> int | None:
    """``"channel"`` -> None; ``"block:N"`` -> N (N >= 2); anything else is a
    UsageError (``"auto"`` is resolved per weight by :meth:`WeightOnlyOptions.block_for`)."""
    if text == "channel":
        return None
    match = _BLOCK.match(text)
    if not match or int(match.group(1)) < 2:
        raise UsageError(f"--granularity must be 'auto', 'channel' or 'block:N' with N >= 2 (e.g. block:32), "
                         f"got '{text}'")
    return int(match.group(1))


@dataclasses.dataclass(frozen=True)
class WeightOnlyOptions:
    """Options of :func:`onnxshrink.lowbit.quantize_weights`.

    ``bits`` is the default width (8, 4, or 3 and 2: fewer levels stored as
    int4 codes) of every quantized weight;
    ``layer_bits`` overrides it per weight name (a width, or None to keep that
    weight in float), what mixed precision sets. ``granularity`` is
    ``"channel"`` (one scale per output channel), ``"block:N"`` (one scale
    per N consecutive input channels of each output channel) or ``"auto"``
    (per layer kind and width, see AUTO_BLOCK). ``rounding`` is
    ``"nearest"`` or ``"gptq"`` (error-compensated, needs calibration data);
    ``sparsity`` > 0 with ``gptq`` prunes in the same sweep (SparseGPT joint
    mode). ``exclude`` holds weight or node names (shell patterns allowed);
    weights with fewer than ``min_size`` elements stay float. ``damp``,
    ``block_size`` and ``calib_samples``/``batch_size`` tune the GPTQ sweep
    and its Hessian statistics. ``gate_floor`` checks the result against the
    original on the eval (else calibration) data and refuses one that fails
    :data:`onnxshrink.validation.DEFAULT_FLOOR` (GateFailed); ``state`` names
    a stateful model's (output, input) pairs for that check.
    """

    bits: int = 8
    granularity: str = "auto"
    rounding: str = "nearest"
    exclude: tuple[str, ...] = ()
    min_size: int = 256
    layer_bits: Mapping[str, int | None] = dataclasses.field(default_factory=dict)
    sparsity: float = 0.0
    damp: float = 0.01
    block_size: int = 128
    calib_samples: int = 256
    batch_size: int = 32
    gate_floor: bool = True
    state: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise UsageError(f"--bits must be 8, 6, 5, 4, 3 or 2, got {self.bits}")
        if self.granularity != "auto":
            parse_granularity(self.granularity)
        if self.rounding not in ROUNDINGS:
            raise UsageError(f"--rounding must be one of {', '.join(ROUNDINGS)}, got '{self.rounding}'")
        for name, bits in dict(self.layer_bits).items():
            if bits is not None and bits not in BITS:
                raise UsageError(f"layer_bits['{name}'] must be 8, 6, 5, 4, 3, 2 or None (float), got {bits}")
        if not 0.0 <= self.sparsity < 1.0:
            raise UsageError(f"sparsity is a fraction in [0, 1), got {self.sparsity}")
        if self.sparsity > 0 and self.rounding != "gptq":
            raise UsageError("pruning while quantizing (sparsity > 0) needs --rounding gptq")
        if self.min_size < 0:
            raise UsageError(f"--min-size must be >= 0, got {self.min_size}")
        if not 0.0 < self.damp < 1.0:
            raise UsageError(f"--damp is a fraction of the mean Hessian diagonal in (0, 1), got {self.damp}")
        for name in ("block_size", "calib_samples", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        # Frozen means frozen: a caller's dict changing later must not change these options.
        object.__setattr__(self, "layer_bits", dict(self.layer_bits))
        object.__setattr__(self, "exclude", tuple(self.exclude))

    def block_for(self, bits: int, op_types: Iterable[str], in_features: int | None = None) -> int | None:
        """Scale block length along the input axis of a ``bits``-wide weight read by
        ``op_types`` with ``in_features`` along that axis, or None for per-channel scales."""
        if self.granularity != "auto":
            return parse_granularity(self.granularity)
        if in_features is not None and in_features <= AUTO_BLOCK_MIN_FEATURES:
            return None
        return AUTO_BLOCK if storage_bits(bits) < 8 and set(op_types) <= AUTO_BLOCK_OPS else None

    def bits_for(self, name: str) -> int | None:
        """The width of weight ``name``: its override, else ``bits`` (None: stays float)."""
        return self.layer_bits[name] if name in self.layer_bits else self.bits

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["exclude"] = list(self.exclude)
        d["layer_bits"] = dict(self.layer_bits)
        d["state"] = [list(p) for p in self.state]
        return d
