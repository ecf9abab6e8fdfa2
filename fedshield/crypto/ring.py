"""Fixed-point encoding of float updates into the ring Z_{2^b}, and bit-packing.

Building block: use the SecAgg+ protocol unless you know why not.

Encoding: clip to ``[-c, c]``, map to ``[0, 2^q - 1]`` and round stochastically (unbiased:
``E[q(x)] = x`` inside the clip range). With integer weights ``w_i < 2^wb`` and ``n`` clients,
``sum_i w_i q_i < 2^(q + wb + ceil(log2 n))``: that is the ring size :func:`ring_bits` returns,
so the modular sum never wraps and decodes exactly.

This is the simple numpy quantizer the SecAgg+ issue allows; the numba kernels issue replaces
it behind the same functions.
"""

from __future__ import annotations

import math

import numpy as np

from fedshield.compress import bitpack

__all__ = ["decode_mean", "encode", "pack", "ring_bits", "unpack"]


def ring_bits(*, quant_bits: int, n_clients: int, weight_bits: int) -> int:
    """Bits of the ring that holds the weighted sum of ``n_clients`` encoded updates."""
    if not 1 <= quant_bits <= 24 or n_clients < 1 or not 0 <= weight_bits <= 24:
        raise ValueError("need 1 <= quant_bits <= 24, n_clients >= 1, 0 <= weight_bits <= 24")
    bits = (
        quant_bits + weight_bits + math.ceil(math.log2(n_clients))
        if n_clients > 1
        else (quant_bits + weight_bits)
    )
    if bits > 62:
        raise ValueError(f"a {bits}-bit ring is too large; lower the bits or the weight bits")
    return bits


def encode(x: np.ndarray, *, clip: float, quant_bits: int, rng: np.random.Generator) -> np.ndarray:
    """Stochastically rounded levels in ``[0, 2^quant_bits - 1]`` (uint32) of clipped ``x``."""
    if not clip > 0:
        raise ValueError("clip must be positive")
    levels = (1 << quant_bits) - 1
    # float32 is exact enough up to 16-bit levels and halves the memory traffic.
    ftype = np.float32 if quant_bits <= 16 else np.float64
    scaled = np.clip(x.astype(ftype, copy=False), -clip, clip)
    scaled += ftype(clip)
    scaled *= ftype(levels / (2 * clip))
    q = np.floor(scaled)
    q += rng.random(x.shape, dtype=ftype) < (scaled - q)
    return np.clip(q, 0, levels).astype(np.uint32)


def decode_mean(
    level_sum: np.ndarray, total_weight: int, *, clip: float, quant_bits: int
) -> np.ndarray:
    """The weighted mean in float units from ``sum_i w_i q_i`` and ``sum_i w_i``."""
    levels = (1 << quant_bits) - 1
    mean_level = level_sum.astype(np.float64) / total_weight
    return (mean_level * (2 * clip / levels) - clip).astype(np.float32)


def pack(values: np.ndarray, bits: int) -> bytes:
    """Pack unsigned values, each below ``2^bits``, into ``ceil(len * bits / 8)`` bytes."""
    return bitpack.pack(values, bits)


def unpack(data: bytes, length: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack`, as ring elements (uint32 up to 32 bits, else uint64)."""
    out = bitpack.unpack(data, length, bits)
    return out.astype(np.uint32) if bits <= 32 else out
