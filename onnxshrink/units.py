"""Sizes as people read them, in binary units labelled so (1 KiB = 1024 bytes).

The one formatter of byte counts for the summaries and the HTML report: a
size printed as "KB" while computed in 1024s said more than was true.
"""

from __future__ import annotations

import math

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def binary_bytes(n: float | None) -> str:
    """``n`` bytes as ``612.8 KiB`` (B below 1 KiB, then KiB, MiB, GiB, TiB, one
    decimal); ``-`` for None."""
    if n is None or (isinstance(n, float) and not math.isfinite(n)):
        return "-"
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
