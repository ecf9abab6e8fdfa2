"""Fixed-point quantization of float updates into the ring Z_{2^b}, and bit-packing.

Building block: use the SecAgg+ protocol unless you know why not.

Quantization: clip to ``[-c, c]``, map to ``[0, 2^q - 1]`` and round stochastically (unbiased:
``E[q(x)] = x`` inside the clip range). With integer weights ``w_i < 2^wb`` and ``n`` clients,
``sum_i w_i q_i < 2^(q + wb + ceil(log2 n))``: that is the ring size :func:`ring_bits` returns,
so the modular sum never wraps and decodes exactly.

Quantization and packing are the numba kernels of :mod:`fedshield.compress` (one quantization path
for every protocol); this module adds the ring sizing and the decoding of sums.
"""

from __future__ import annotations

import math

import numpy as np

from fedshield.compress import bitpack
from fedshield.compress.quantize import MAX_BITS, dequantize_fixed, quantize_fixed
from fedshield.crypto.prg import ring_dtype

__all__ = [
    "check_on_grid",
    "dequantize",
    "dequantize_mean",
    "dequantize_sum",
    "from_digits",
    "integer_weight",
    "pack",
    "quantize",
    "ring_bits",
    "to_digits",
    "unpack",
    "unpack_add",
    "weight_fraction",
    "weight_top",
]


def ring_bits(*, quant_bits: int, n_clients: int, weight_bits: int) -> int:
    """Bits of the ring that holds the weighted sum of ``n_clients`` encoded updates."""
    if not 1 <= quant_bits <= MAX_BITS or n_clients < 1 or not 0 <= weight_bits <= 24:
        raise ValueError(
            f"need 1 <= quant_bits <= {MAX_BITS}, n_clients >= 1, 0 <= weight_bits <= 24"
        )
    bits = (
        quant_bits + weight_bits + math.ceil(math.log2(n_clients))
        if n_clients > 1
        else (quant_bits + weight_bits)
    )
    if bits > 62:
        raise ValueError(f"a {bits}-bit ring is too large; lower the bits or the weight bits")
    return bits


def weight_top(weight_bits: int) -> int:
    """The integer weight of a site at ``max_weight`` (1 when ``weight_bits`` is 0)."""
    return max(1, (1 << weight_bits) - 1)


def integer_weight(weight: float, max_weight: float, weight_bits: int) -> int:
    """A site's FedAvg weight as an integer in ``[1, 2^weight_bits - 1]``, scaled to the
    public ``max_weight`` (always 1 when ``weight_bits`` is 0: an unweighted mean)."""
    if weight_bits == 0:
        return 1
    top = weight_top(weight_bits)
    return int(min(top, max(1, round(weight / max_weight * top))))


def weight_fraction(weight: int, weight_bits: int) -> np.float32:
    """Fraction weighting: the share ``W / (2^weight_bits - 1)`` a site scales its update by
    before quantizing, so that the summed levels already hold ``sum_i share_i x_i``."""
    return np.float32(weight / weight_top(weight_bits))


def to_digits(value: int, *, quant_bits: int, count: int) -> list[int]:
    """``value`` as ``count`` base-``2^quant_bits`` digits, least significant first: each fits
    a quantized value's field, so ``n`` sites' digits sum without carrying over."""
    mask = (1 << quant_bits) - 1
    return [(value >> (k * quant_bits)) & mask for k in range(count)]


def from_digits(digits, *, quant_bits: int) -> int:
    """The integer whose base-``2^quant_bits`` digits (or digit sums) are ``digits``."""
    return sum(int(d) << (k * quant_bits) for k, d in enumerate(digits))


def check_on_grid(
    levels: np.ndarray, digits: np.ndarray, *, count: int, weight: int, quant_bits: int,
    weight_bits: int, integer: bool,
) -> None:  # fmt: skip
    """Raise ``ValueError`` unless a decoded sum is one that ``count`` sites on the grid could
    have sent: each weight in ``[1, 2^weight_bits - 1]``, each level at most
    ``2^quant_bits - 1`` (times its weight under integer weighting), each weight digit a
    digit, and under fraction weighting (sites clip, then scale by ``W_i / top``) every level
    sum within ``L/2 · sum W_i / top + count`` of ``count · L/2`` (``L = 2^quant_bits - 1``;
    the ``count``: one step of rounding per site). A site that put other values in (a level
    of 1000, a weight of 0 with top levels) would otherwise move the mean outside the public
    range; within these bounds the decoded mean stays inside it."""
    top, level = weight_top(weight_bits), (1 << quant_bits) - 1
    most = weight * level if integer else count * level
    high = int(levels.max()) if levels.size else 0  # one pass, used twice
    if (
        not count <= weight <= count * top
        or int(digits.max(initial=0)) > (weight if integer else count * level)
        or (levels.size and high > most)
        or (levels.size and not integer and _deviation(levels, count * level / 2, high)
            > level / 2 * weight / top + count)
    ):  # fmt: skip
        raise ValueError(
            f"the decoded sum is outside what {count} sites on the grid can send (a site sent "
            "levels or a weight off the grid)"
        )


def _deviation(levels: np.ndarray, middle: float, high: int) -> float:
    """The largest distance of a level sum from ``middle`` (``high``: the largest sum)."""
    return max(high - middle, middle - float(levels.min()))


def quantize(
    x: np.ndarray, *, clip: float, quant_bits: int, seed: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Stochastically rounded levels in ``[0, 2^quant_bits - 1]`` of ``x`` clipped to
    ``[-clip, clip]``: the shared-range kernel of :mod:`fedshield.compress.quantize`, written
    into ``out`` (a ring-dtype slice) when given."""
    return quantize_fixed(x, clip=clip, bits=quant_bits, seed=seed, out=out)


def dequantize_mean(
    level_sum: np.ndarray, total_weight: int, *, clip: float, quant_bits: int
) -> np.ndarray:
    """The weighted mean in float units from ``sum_i w_i q_i`` and ``sum_i w_i``."""
    levels = (1 << quant_bits) - 1
    mean = level_sum.astype(np.float64)  # a new array: the steps below work in place
    mean /= total_weight
    mean *= 2 * clip / levels
    mean -= clip
    return mean.astype(np.float32)


def dequantize_sum(
    level_sum: np.ndarray, count: int, *, clip: float, quant_bits: int
) -> np.ndarray:
    """The float64 sum of ``count`` sites' dequantized values from the sum of their levels."""
    step = 2 * clip / ((1 << quant_bits) - 1)
    total = level_sum.astype(np.float64)  # a new array: the steps below work in place
    total *= step
    total -= count * clip
    return total


def dequantize(levels: np.ndarray, *, clip: float, quant_bits: int) -> np.ndarray:
    """Float32 values of one client's levels (what it contributes to the sum)."""
    return dequantize_fixed(levels, clip=clip, bits=quant_bits)


def pack(values: np.ndarray, bits: int) -> memoryview:
    """Pack unsigned values, each below ``2^bits``, into ``ceil(len * bits / 8)`` bytes (a
    read-only view: :func:`~fedshield.compress.bitpack.pack`)."""
    return bitpack.pack(values, bits)


def unpack(data: bytes | memoryview, length: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack`, as ring elements (:func:`~fedshield.crypto.prg.ring_dtype`)."""
    return bitpack.unpack(data, length, bits, ring_dtype(bits))


def unpack_add(data: bytes | memoryview, length: int, bits: int, acc: np.ndarray) -> np.ndarray:
    """Add the ring elements that :func:`pack` wrote into ``data`` to ``acc`` in place, modulo
    ``acc``'s dtype (a multiple of ``2^bits``), with no temporary array; returns ``acc``.

    ``acc``: a contiguous array of ``length`` ring elements
    (:func:`~fedshield.crypto.prg.ring_dtype`); ``data``: bytes or a memoryview at any offset.
    """
    if not isinstance(acc, np.ndarray) or acc.dtype != ring_dtype(bits):
        raise ValueError(f"acc must be an array of {ring_dtype(bits)} for a {bits}-bit ring")
    return bitpack.unpack_add(data, length, bits, acc)
