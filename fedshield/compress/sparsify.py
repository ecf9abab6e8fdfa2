"""Sparsification kernels: exact and approximate top-k by magnitude, and shared-seed rand-k.

All three return sorted int64 indices.

- :func:`topk_exact` selects the ``k`` largest ``|x|`` by a two-pass radix select on the float
  bits (for non-negative IEEE floats the bit pattern orders like the value): a 65,536-bin
  histogram of the high 16 bits finds the bucket holding the k-th value, a second histogram of
  the low 16 bits inside that bucket finds the exact threshold, and a parallel gather writes the
  indices in order. Ties at the threshold go to the lowest indices, as in a stable sort.
- :func:`topk_sampled` estimates the threshold from a sample and keeps every value at or above
  it: about ``k`` indices, in one pass over the data.
- :func:`randk` keeps the ``k`` indices with the largest counter-based hash under a seed. Every
  client that uses the round's shared seed keeps the same indices, which is what lets a sparse
  update go through secure aggregation or HE; a new seed gives a new uniform subset.
"""

from __future__ import annotations

import numpy as np
from numba import get_num_threads, njit, prange

from fedshield.compress._parallel import parallel_kernel
from fedshield.compress.counter_rng import MAX_INDEX, hash32, split_seed, uint32_reference

__all__ = [
    "k_for",
    "randk",
    "randk_reference",
    "topk_exact",
    "topk_reference",
    "topk_sampled",
]

_BINS = 1 << 16
_LOW = np.uint32(0xFFFF)
_SIGN_OFF = np.uint32(0x7FFFFFFF)


def k_for(dim: int, fraction: float) -> int:
    """How many values a fraction keeps: ``ceil(fraction · dim)``, at least 1."""
    if not 0 < fraction <= 1:
        raise ValueError(f"the kept fraction must be in (0, 1], got {fraction}")
    return max(1, min(dim, int(np.ceil(fraction * dim - 1e-9))))


def _magnitude_bits(x: np.ndarray) -> np.ndarray:
    """The float32 bit patterns of ``x``; kernels mask the sign off (NaN ranks above inf)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError("sparsify a flat array")
    return x.view(np.uint32)


# --- the select kernel ------------------------------------------------------------------------
@parallel_kernel
def _histograms(keys, mask, n_parts):  # pragma: no cover - compiled
    """One histogram of the high 16 bits of ``keys & mask`` per contiguous part."""
    n = keys.size
    per = (n + n_parts - 1) // n_parts
    hist = np.zeros((n_parts, _BINS), dtype=np.int64)
    for p in prange(n_parts):
        for i in range(np.uint64(p * per), np.uint64(min((p + 1) * per, n))):
            hist[p, (keys[i] & mask) >> np.uint32(16)] += 1
    return hist


@njit(cache=True)
def _bucket_of_kth(hist, k):  # pragma: no cover - compiled
    """The bucket holding the k-th largest entry, and how many entries lie above it."""
    above = 0
    for b in range(hist.size - 1, -1, -1):
        if above + hist[b] >= k:
            return b, above
        above += hist[b]
    return 0, above


@parallel_kernel
def _at_least(keys, mask, lower, counts):  # pragma: no cover - compiled
    """Indices ``i`` with ``keys[i] & mask >= lower``, in order; ``counts`` per part known."""
    n = keys.size
    n_parts = counts.size
    per = (n + n_parts - 1) // n_parts
    offset = np.zeros(n_parts + 1, dtype=np.int64)
    for p in range(n_parts):
        offset[p + 1] = offset[p] + counts[p]
    out = np.empty(offset[n_parts], dtype=np.int64)
    for p in prange(n_parts):
        j = offset[p]
        for i in range(np.uint64(p * per), np.uint64(min((p + 1) * per, n))):
            if keys[i] & mask >= lower:
                out[j] = i
                j += 1
    return out


@njit(cache=True)
def _finish(candidates, keys, mask, high, k):  # pragma: no cover - compiled
    """The ``k`` largest among candidates (all in bucket ``high`` or above), ties to the first."""
    low_hist = np.zeros(_BINS, dtype=np.int64)
    above = 0
    for i in candidates:
        key = keys[i] & mask
        if key >> np.uint32(16) == high:
            low_hist[key & _LOW] += 1
        else:
            above += 1
    low, above_low = _bucket_of_kth(low_hist, k - above)
    threshold = np.uint32((np.uint32(high) << np.uint32(16)) | np.uint32(low))
    ties = k - above - above_low
    out = np.empty(k, dtype=np.int64)
    j = 0
    for i in candidates:
        key = keys[i] & mask
        if key > threshold or (key == threshold and ties > 0):
            if key == threshold:
                ties -= 1
            out[j] = i
            j += 1
    return out


def _parts(n: int) -> int:
    """Parallel parts: a few per thread, but none under 256k values (each costs a histogram)."""
    return max(1, min(4 * get_num_threads(), n >> 18))


def _select_largest(keys: np.ndarray, k: int, mask: int = 0xFFFFFFFF) -> np.ndarray:
    """Sorted indices of the ``k`` largest ``keys & mask`` (uint32), ties to the lowest index.

    Pass 1 counts, per part, the high 16 bits; the bucket of the k-th largest follows. Pass 2
    writes every index in or above that bucket (the per-part counts give each part its slot).
    The exact threshold and the ties are settled among those few candidates.
    """
    if not 0 < k <= keys.size:
        raise ValueError(f"k must be in 1..{keys.size}, got {k}")
    mask = np.uint32(mask)
    hist = _histograms(keys, mask, _parts(keys.size))
    high, _ = _bucket_of_kth(hist.sum(axis=0), k)
    candidates = _at_least(keys, mask, np.uint32(high << 16), hist[:, high:].sum(axis=1))
    return _finish(candidates, keys, mask, np.uint32(high), k)


def _select_reference(keys: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-keys.astype(np.int64), kind="stable")
    return np.sort(order[:k])


# --- public kernels ---------------------------------------------------------------------------
def topk_exact(x: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of the ``k`` entries of ``x`` largest in magnitude (exact)."""
    return _select_largest(_magnitude_bits(x), k, _SIGN_OFF)


def topk_reference(x: np.ndarray, k: int) -> np.ndarray:
    """numpy oracle of :func:`topk_exact` (a stable argsort)."""
    return _select_reference(_magnitude_bits(x) & _SIGN_OFF, k)


def topk_sampled(x: np.ndarray, k: int, *, seed: int, sample: int = 65_536) -> np.ndarray:
    """Sorted indices of about ``k`` entries largest in magnitude (threshold from a sample)."""
    bits = _magnitude_bits(x)
    if not 0 < k <= bits.size:
        raise ValueError(f"k must be in 1..{bits.size}, got {k}")
    if bits.size <= sample:
        return _select_largest(bits, k, _SIGN_OFF)
    picks = uint32_reference(0, sample, seed).astype(np.int64) % bits.size
    sampled = np.sort(bits[picks] & _SIGN_OFF)
    threshold = sampled[min(sample - 1, int(sample * (1 - k / bits.size)))]
    # Every value at or above the estimated threshold; the counts come from one pass.
    counts = _count_at_least(bits, _SIGN_OFF, threshold, _parts(bits.size))
    return _at_least(bits, _SIGN_OFF, threshold, counts)


@parallel_kernel
def _count_at_least(keys, mask, lower, n_parts):  # pragma: no cover - compiled
    n = keys.size
    per = (n + n_parts - 1) // n_parts
    counts = np.zeros(n_parts, dtype=np.int64)
    for p in prange(n_parts):
        c = 0
        for i in range(np.uint64(p * per), np.uint64(min((p + 1) * per, n))):
            c += keys[i] & mask >= lower
        counts[p] = c
    return counts


@parallel_kernel
def _hash_keys(n, k0, k1, out):  # pragma: no cover - compiled
    for i in prange(n):
        out[i] = hash32(i, k0, k1)


def randk(dim: int, k: int, *, seed: int, block: int = 0) -> np.ndarray:
    """Sorted indices of a uniform random ``k``-subset of ``range(dim)``, fixed by ``seed``.

    ``seed`` fixes a random order of the coordinates; ``block`` ``b`` takes its places
    ``b·k .. (b+1)·k - 1``. Blocks ``0 .. dim // k - 1`` of one seed are disjoint, so a schedule
    that walks through them visits every coordinate once per cycle (rand-k without
    replacement); each block on its own is a uniform random ``k``-subset.
    """
    if not 0 < dim <= MAX_INDEX:
        raise ValueError(f"dim must be in 1..{MAX_INDEX}")
    if not 0 <= block < max(1, dim // max(k, 1)):
        raise ValueError(f"block must be in 0..{dim // max(k, 1) - 1}")
    keys = np.empty(dim, dtype=np.uint32)
    _hash_keys(dim, *split_seed(seed), keys)
    upto = _select_largest(keys, (block + 1) * k)
    if block == 0:
        return upto
    kept = np.zeros(dim, dtype=bool)  # O(dim) marks, where a set difference would sort
    kept[upto] = True
    kept[_select_largest(keys, block * k)] = False
    return np.flatnonzero(kept)


def randk_reference(dim: int, k: int, *, seed: int, block: int = 0) -> np.ndarray:
    """numpy oracle of :func:`randk`."""
    keys = uint32_reference(0, dim, seed)
    order = np.argsort(-keys.astype(np.int64), kind="stable")
    return np.sort(order[block * k : (block + 1) * k])
