"""What a weight-only quantization run is asked to do: one frozen dataclass."""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping

from onnxshrink.errors import UsageError

BITS = (8, 4, 3, 2)  # 3 and 2: fewer levels, stored as int4 codes (entropy coding packs them smaller)
ROUNDINGS = ("nearest", "gptq")
GRANULARITIES = ("channel", "block:N")
_BLOCK = re.compile(r"^block:(\d+)$")


def parse_granularity(text: str) -> int | None:
    """``"channel"`` -> None; ``"block:N"`` -> N (N >= 2); anything else is a UsageError."""
    if text == "channel":
        return None
    match = _BLOCK.match(text)
    if not match or int(match.group(1)) < 2:
        raise UsageError(f"--granularity must be 'channel' or 'block:N' with N >= 2 (e.g. block:32), got '{text}'")
    return int(match.group(1))


@dataclasses.dataclass(frozen=True)
class WeightOnlyOptions:
    """Options of :func:`onnxshrink.lowbit.quantize_weights`.

    ``bits`` is the default width (8, 4, or 3 and 2: fewer levels stored as
    int4 codes) of every quantized weight;
    ``layer_bits`` overrides it per weight name (a width, or None to keep that
    weight in float), what mixed precision sets. ``granularity`` is
    ``"channel"`` (one scale per output channel) or ``"block:N"`` (one scale
    per N consecutive input channels of each output channel). ``rounding`` is
    ``"nearest"`` or ``"gptq"`` (error-compensated, needs calibration data);
    ``sparsity`` > 0 with ``gptq`` prunes in the same sweep (SparseGPT joint
    mode). ``exclude`` holds weight or node names (shell patterns allowed);
    weights with fewer than ``min_size`` elements stay float. ``damp``,
    ``block_size`` and ``calib_samples``/``batch_size`` tune the GPTQ sweep
    and its Hessian statistics.
    """

    bits: int = 8
    granularity: str = "channel"
    rounding: str = "nearest"
    exclude: tuple[str, ...] = ()
    min_size: int = 256
    layer_bits: Mapping[str, int | None] = dataclasses.field(default_factory=dict)
    sparsity: float = 0.0
    damp: float = 0.01
    block_size: int = 128
    calib_samples: int = 256
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise UsageError(f"--bits must be 8, 4, 3 or 2, got {self.bits}")
        parse_granularity(self.granularity)
        if self.rounding not in ROUNDINGS:
            raise UsageError(f"--rounding must be one of {', '.join(ROUNDINGS)}, got '{self.rounding}'")
        for name, bits in dict(self.layer_bits).items():
            if bits is not None and bits not in BITS:
                raise UsageError(f"layer_bits['{name}'] must be 8, 4, 3, 2 or None (float), got {bits}")
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

    @property
    def block(self) -> int | None:
        """Scale block length along the input axis, or None for per-channel scales."""
        return parse_granularity(self.granularity)

    def bits_for(self, name: str) -> int | None:
        """The width of weight ``name``: its override, else ``bits`` (None: stays float)."""
        return self.layer_bits[name] if name in self.layer_bits else self.bits

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["exclude"] = list(self.exclude)
        d["layer_bits"] = dict(self.layer_bits)
        return d
