"""Unbiased stochastic quantization to ``bits`` bits, numba kernels with numpy references.

Two modes:

- **Fixed range** (:func:`quantize_fixed`): clip to ``[-clip, clip]`` and map onto the levels
  ``0 .. 2^bits - 1``. Every client uses the same public scale, so integer levels add up:
  what secure aggregation and HE need.
- **Per-chunk range** (:func:`quantize_chunked`): each chunk of ``chunk`` values gets its own
  ``(low, step)`` from its min and max. Nothing is clipped; for plaintext updates.

Rounding is stochastic and unbiased (``E[dequantize(quantize(x))] = x`` inside the range, and
the error never exceeds one step), with counter-based random numbers (:mod:`counter_rng`): the
number used for element ``i`` depends only on ``(seed, i)``, so the result is reproducible and
identical to the numpy reference. All arithmetic is float32, which is exact enough for up to 16
bits.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from fedshield.compress._parallel import parallel_kernel
from fedshield.compress.counter_rng import MAX_INDEX, split_seed, uniform32, uniform_reference

__all__ = [
    "DEFAULT_CHUNK",
    "MAX_BITS",
    "dequantize_chunked",
    "dequantize_fixed",
    "dequantize_fixed_reference",
    "quantize_chunked",
    "quantize_chunked_reference",
    "quantize_fixed",
    "quantize_fixed_reference",
]

MAX_BITS = 16
DEFAULT_CHUNK = 1024
_BLOCK = 1 << 16  # elements per parallel task


def _check(x: np.ndarray, bits: int) -> np.ndarray:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in 1..{MAX_BITS}, got {bits}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 1 or x.size > MAX_INDEX:
        raise ValueError(f"quantize a flat array (ravel it first) of at most {MAX_INDEX} values")
    return x


def _level_dtype(bits: int) -> np.dtype:
    return np.dtype(np.uint8 if bits <= 8 else np.uint16)


def _fixed_scale(clip: float, bits: int) -> tuple[np.float32, np.float32]:
    if not clip > 0:
        raise ValueError("clip must be positive")
    levels = (1 << bits) - 1
    return np.float32(clip), np.float32(levels / (2 * clip))


# --- fixed range ------------------------------------------------------------------------------
@parallel_kernel
def _quantize_fixed(x, clip, scale, levels, k0, k1, out):  # pragma: no cover - compiled
    n = x.size
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        start = block * _BLOCK
        for i in range(np.uint64(start), np.uint64(min(start + _BLOCK, n))):
            s = (min(max(x[i], -clip), clip) + clip) * scale
            f = np.floor(s)
            q = f + np.float32(1.0) if uniform32(i, k0, k1) < s - f else f
            out[i] = np.uint32(min(q, levels))


def quantize_fixed(
    x: np.ndarray, *, clip: float, bits: int, seed: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Levels in ``[0, 2^bits - 1]`` of ``x`` clipped to ``[-clip, clip]``.

    Args:
        x: flat float array.
        clip: the public range bound.
        bits: 1..16.
        seed: 64-bit stream seed (see :func:`counter_rng.derive_seed`).
        out: optional unsigned-integer array of ``x.size`` to write into (e.g. a ring buffer).
    """
    x = _check(x, bits)
    c, scale = _fixed_scale(clip, bits)
    if out is None:
        out = np.empty(x.size, dtype=_level_dtype(bits))
    if out.shape != x.shape or out.dtype.kind != "u":
        raise ValueError("out must be an unsigned array of the same length")
    _quantize_fixed(x, c, scale, np.float32((1 << bits) - 1), *split_seed(seed), out)
    return out


def quantize_fixed_reference(x: np.ndarray, *, clip: float, bits: int, seed: int) -> np.ndarray:
    """numpy oracle of :func:`quantize_fixed` (same random numbers, same float32 steps)."""
    x = _check(x, bits)
    c, scale = _fixed_scale(clip, bits)
    s = (np.clip(x, -c, c) + c) * scale
    f = np.floor(s)
    q = f.astype(np.int64) + (uniform_reference(0, x.size, seed) < s - f)
    return np.minimum(q, (1 << bits) - 1).astype(_level_dtype(bits))


@parallel_kernel
def _dequantize_fixed(levels, clip, scale, out):  # pragma: no cover - compiled
    n = levels.size
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        start = block * _BLOCK
        for i in range(np.uint64(start), np.uint64(min(start + _BLOCK, n))):
            out[i] = np.float32(levels[i]) / scale - clip


def dequantize_fixed(levels: np.ndarray, *, clip: float, bits: int) -> np.ndarray:
    """Float32 values of fixed-range levels."""
    c, scale = _fixed_scale(clip, bits)
    levels = np.ascontiguousarray(levels)
    out = np.empty(levels.shape, dtype=np.float32)
    _dequantize_fixed(levels.reshape(-1), c, scale, out.reshape(-1))
    return out


def dequantize_fixed_reference(levels: np.ndarray, *, clip: float, bits: int) -> np.ndarray:
    """numpy oracle of :func:`dequantize_fixed`."""
    c, scale = _fixed_scale(clip, bits)
    return levels.astype(np.float32) / scale - c


# --- per-chunk range --------------------------------------------------------------------------
@parallel_kernel
def _quantize_chunked(x, chunk, levels, k0, k1, out, low, step):  # pragma: no cover - compiled
    n = x.size
    for c in prange((n + chunk - 1) // chunk):
        start = c * chunk
        end = min(start + chunk, n)
        lo = x[start]
        hi = x[start]
        for i in range(np.uint64(start), np.uint64(end)):
            lo = min(lo, x[i])
            hi = max(hi, x[i])
        width = (hi - lo) / levels
        inv = np.float32(1.0) / width if width > 0 else np.float32(0.0)
        low[c] = lo
        step[c] = width
        for i in range(np.uint64(start), np.uint64(end)):
            s = (x[i] - lo) * inv
            f = np.floor(s)
            q = f + np.float32(1.0) if uniform32(i, k0, k1) < s - f else f
            out[i] = np.uint32(min(q, levels))


def quantize_chunked(
    x: np.ndarray, *, bits: int, seed: int, chunk: int = DEFAULT_CHUNK
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(levels, low, step)``: per-chunk levels and each chunk's float32 offset and step.

    ``x`` must be finite (a NaN would poison its chunk's range).
    """
    x = _check(x, bits)
    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    if not np.isfinite(x).all():
        raise ValueError("cannot quantize NaN or infinity")
    n_chunks = -(-x.size // chunk)
    out = np.empty(x.size, dtype=_level_dtype(bits))
    low = np.empty(n_chunks, dtype=np.float32)
    step = np.empty(n_chunks, dtype=np.float32)
    _quantize_chunked(x, chunk, np.float32((1 << bits) - 1), *split_seed(seed), out, low, step)
    return out, low, step


def quantize_chunked_reference(
    x: np.ndarray, *, bits: int, seed: int, chunk: int = DEFAULT_CHUNK
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numpy oracle of :func:`quantize_chunked`."""
    x = _check(x, bits)
    levels = (1 << bits) - 1
    pad = -x.size % chunk
    rows = np.pad(x, (0, pad), mode="edge").reshape(-1, chunk)
    low, high = rows.min(axis=1), rows.max(axis=1)
    step = (high - low) / np.float32(levels)
    with np.errstate(divide="ignore"):
        inv = np.where(step > 0, np.float32(1.0) / step, np.float32(0.0)).astype(np.float32)
    s = ((rows - low[:, None]) * inv[:, None]).reshape(-1)[: x.size]
    f = np.floor(s)
    q = f.astype(np.int64) + (uniform_reference(0, x.size, seed) < s - f)
    return np.minimum(q, levels).astype(_level_dtype(bits)), low, step


@parallel_kernel
def _dequantize_chunked(levels, low, step, chunk, out):  # pragma: no cover - compiled
    n = levels.size
    for c in prange((n + chunk - 1) // chunk):
        start = c * chunk
        for i in range(np.uint64(start), np.uint64(min(start + chunk, n))):
            out[i] = low[c] + np.float32(levels[i]) * step[c]


def dequantize_chunked(
    levels: np.ndarray, low: np.ndarray, step: np.ndarray, *, chunk: int = DEFAULT_CHUNK
) -> np.ndarray:
    """Float32 values of per-chunk levels."""
    if low.shape != step.shape or low.size != -(-levels.size // chunk):
        raise ValueError("low and step need one entry per chunk")
    out = np.empty(levels.size, dtype=np.float32)
    _dequantize_chunked(levels, low.astype(np.float32), step.astype(np.float32), chunk, out)
    return out
