"""The server's running sums in one pass: ``acc += weight * values`` (float64 accumulator,
float32 values) and the finiteness check before it.

numpy's ``acc += weight * values.astype(np.float64)`` allocates two temporaries the size of
the model per message and ``np.isfinite(values).all()`` a third; on a ResNet18 update
(11.2M values) that is about 100 ms per site, near 300 MB/s. These kernels read each value
once and allocate nothing. The arithmetic is numpy's, value by value (``float64(weight) *
float64(value)``, then the add), so sums are bit-for-bit what numpy gives (tested).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from fedshield.compress._parallel import parallel_kernel

__all__ = ["add_scaled", "add_scaled_reference", "all_finite"]


def all_finite(values: np.ndarray) -> bool:
    """Whether every value of a float32 vector is finite (no NaN, no infinity)."""
    return _count_non_finite(np.ascontiguousarray(values, dtype=np.float32).reshape(-1)) == 0


def add_scaled(acc: np.ndarray, weight: float, values: np.ndarray) -> None:
    """``acc += weight * values`` in place: ``acc`` float64, ``values`` float32, same length."""
    if acc.dtype != np.float64 or not acc.flags.c_contiguous:
        raise TypeError("acc must be a contiguous float64 array")
    values = np.ascontiguousarray(values, dtype=np.float32)
    if acc.shape != values.shape:
        raise ValueError(f"acc has shape {acc.shape}, values {values.shape}")
    _add_scaled(acc.reshape(-1), np.float64(weight), values.reshape(-1))


def add_scaled_reference(acc: np.ndarray, weight: float, values: np.ndarray) -> None:
    """numpy's way (the oracle of the tests)."""
    acc += np.float64(weight) * values.astype(np.float64)


@parallel_kernel
def _count_non_finite(values):  # pragma: no cover - compiled
    bad = 0
    for i in prange(values.size):
        if not np.isfinite(values[i]):
            bad += 1
    return bad


@parallel_kernel
def _add_scaled(acc, weight, values):  # pragma: no cover - compiled
    for i in prange(values.size):
        acc[i] += weight * np.float64(values[i])
