"""The CPUs an int8 model is written for, and the weight codes that stay exact on them.

onnxruntime's x86 integer kernels multiply uint8 activations by int8 weights.
On CPUs without VNNI (AVX2, and AVX-512 before VNNI) MLAS does it with
``vpmaddubsw``, which adds two u8 x s8 products into a *saturating* int16:
with activations up to 255 a pair stays exact only while
``2 * 255 * |w| <= 32767``, that is ``|w| <= 64``. int8 activations do not
escape it: onnxruntime shifts them to uint8 before the same kernels. VNNI
(``vpdpbusd``) and ARM's ``sdot``/``udot``/``smmla`` accumulate in int32,
and ARM's baseline NEON kernel multiplies int8 by int8 (a pair at most
2 * 128 * 127 = 32,512): the symmetric int8 range [-127, 127] is exact there.

So by default (``x86-avx2``, which runs everywhere) the int8 weight codes of
static and dynamic quantization stay within [-64, 64]; ``x86-vnni`` and
``arm`` allow the full [-127, 127] for models that will only run there.
onnxruntime's own tools call the bounded range ``reduce_range`` (7-bit
weights) and leave it off by default.

Weight-only int8 (:mod:`onnxshrink.lowbit`) keeps the full range on every
target: its activations stay float, and the one integer kernel onnxruntime
(1.32) turns it into, MatMulNBits with int8 compute, multiplies int8 by
int8 and is exact on AVX2 even for codes 127 and -128 (measured under
scripts/avx2_emulation.sh; docs/quantize.md).
"""

from __future__ import annotations

from onnxshrink.errors import UsageError

# Largest |int8 weight code| that is exact on each target.
INT8_WEIGHT_LIMITS = {"x86-avx2": 64, "x86-vnni": 127, "arm": 127}
TARGETS = tuple(INT8_WEIGHT_LIMITS)
DEFAULT_TARGET = "x86-avx2"


def check_target(target: str) -> None:
    """UsageError naming the choices when ``target`` is not one of TARGETS."""
    if target not in INT8_WEIGHT_LIMITS:
        raise UsageError(f"--target must be one of {', '.join(TARGETS)}, got '{target}' "
                         "(x86-avx2 runs on every CPU; the others allow full-range int8 weights)")


def int8_weight_limit(target: str) -> int:
    """The largest |code| an int8 weight may use when the model runs on ``target``."""
    check_target(target)
    return INT8_WEIGHT_LIMITS[target]
