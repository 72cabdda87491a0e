"""Run numpy's BLAS on one thread for a while: the pruning linear algebra.

OBS and least-squares refits do many mid-sized factorisations and products
(64..1024). OpenBLAS hands those to its thread pool, and on a busy machine
the pool's hand-offs stall: a 128x128 Cholesky was measured at 480 ms
threaded against 0.04 ms at 96x96 (single-threaded path), load 9 on 2 cores.
:func:`single_threaded` sets the pool to one thread and restores it after.
It finds the OpenBLAS that numpy loaded (Linux, via /proc/self/maps); with
any other BLAS, or none found, it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import re
from typing import Iterator

# (setter, getter) symbol names of the OpenBLAS builds numpy ships or links.
_SYMBOLS = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
)


@functools.lru_cache(maxsize=1)
def _openblas() -> tuple | None:
    import numpy  # noqa: F401  (loads its BLAS)

    try:
        with open("/proc/self/maps") as f:
            paths = sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", f.read())))
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _SYMBOLS:
            setter, getter = getattr(lib, set_name, None), getattr(lib, get_name, None)
            if setter is not None and getter is not None:
                getter.restype = ctypes.c_int
                setter.argtypes = [ctypes.c_int]
                return setter, getter
    return None


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """numpy's OpenBLAS on one thread inside the block (no-op when not found)."""
    found = _openblas()
    if found is None:
        yield
        return
    setter, getter = found
    before = getter()
    setter(1)
    try:
        yield
    finally:
        setter(before)
