"""Adaptive public ranges for the shared-range protocols (``secagg``, ``he`` BFV).

Every site must quantize on the same grid, since the sum of levels is decoded with one range.
One fixed range ``[-c, c]`` for a whole model is both too small (it clips large moves: BatchNorm
statistics move by tenths early on) and too large (weights move by hundredths, so most levels
go unused). Here each exchanged tensor ``j`` gets its own range ``2^e_j``, and the ranges follow
the updates from round to round.

**The statistic.** With its update, inside the same secure sum (SecAgg+ masks it, HE encrypts
it), each site adds, per tensor, a one-hot vector of :data:`BUCKETS` integers: bucket ``k``
(``k = LOW .. HIGH``) is 1 when the largest ``|value|`` of its tensor, **before** weighting,
lies in ``(2^(k-1), 2^k]`` in units of the current range (bucket ``LOW`` also takes everything
at or below ``2^LOW``, bucket ``HIGH`` everything above ``2^(HIGH-1)``, NaN and infinity). A
tensor that is empty (rand-k kept none of it) or all zero sends zeros. The decoded sum is, per
tensor and octave, **how many sites' largest value fell in that octave** relative to the
public range: nothing about which site, nothing finer than a power of two, and nothing about
the sites' weights (the octave is taken before a site scales its update by its weight
fraction; a weighted octave would tell a 300-sample site from a 9-sample one). That, and
which tensors were all zero at how many sites, is all the ranges reveal beyond the aggregate.
The decoders check the counts (:meth:`TensorRanges.check_counts`): no row may count more sites
than the sum holds.

**The rule** (:meth:`TensorRanges.next`): the next range of tensor ``j`` is the top of the
highest occupied octave: the smallest power of two that would have held every reporting site's
largest value, except at the ends (a value beyond ``2^(HIGH-1)`` moves the range by ``2^HIGH``
only, so a range can take a few rounds to catch a jump of more than 8x; everything below
``2^LOW`` moves it by ``2^LOW``), and within ``[2^MIN_EXPONENT, 2^MAX_EXPONENT]``. It stays put
when no site reported. This is a secure histogram rather than the single bit of Andrew et al.,
"Differentially Private Learning with Adaptive Clipping" (NeurIPS 2021), so that a range off
by 100x is right after one round instead of a dozen.

**Round one** starts from ``2^-3`` for trainable tensors (:data:`INITIAL_EXPONENT`) and from
``1`` for buffers (:data:`INITIAL_STATE_EXPONENT`). BatchNorm running statistics are state,
not steps: a round moves a running variance by up to its own size, O(1) for normalised
activations (measured on BreastMNIST: 0.65 in round one, then 0.2, while weights move by
0.01). Clipping them at 0.125 in round one cost 0.04 AUC at round five (mean of 5 seeds),
although the ranges were right from round two. What clips in round one is seen in the
statistic and fixed in round two.

How this composes with differential privacy's L2 clipping, and what a deviating server can
and cannot do with the ranges: ``docs/ranges.md``.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedshield.crypto import ring
from fedshield.errors import ConfigError

__all__ = [
    "BUCKETS",
    "HIGH",
    "INITIAL_EXPONENT",
    "INITIAL_STATE_EXPONENT",
    "LOW",
    "MAX_EXPONENT",
    "MIN_EXPONENT",
    "Grid",
    "TensorRanges",
]

LOW, HIGH = -8, 3  # octaves the statistic tells apart, relative to the current range
BUCKETS = HIGH - LOW + 1
INITIAL_EXPONENT = -3  # round one's range of a trainable tensor: 2^-3 = 0.125
INITIAL_STATE_EXPONENT = 0  # ... of a buffer (BatchNorm running statistics): 1
MIN_EXPONENT, MAX_EXPONENT = -40, 20  # ranges stay in [2^-40, 2^20]


@dataclass(frozen=True, eq=False)
class TensorRanges:
    """One round's public ranges: segment ``j`` of the protocol vector (``sizes[j]`` values,
    one exchanged tensor, possibly shortened by rand-k) has the range ``2^exponents[j]``.

    Example:
        >>> r = TensorRanges.initial([3, 2])
        >>> r.scaled(np.array([0.1, -0.2, 0.0, 1.0, 0.5], np.float32), 1.0).tolist()
        [0.800000011920929, -1.600000023841858, 0.0, 8.0, 4.0]
    """

    sizes: tuple[int, ...]
    exponents: tuple[int, ...]

    def __post_init__(self) -> None:
        try:  # integers only: 2.7 or True are refused, not rounded
            sizes = tuple(_integer(s) for s in self.sizes)
            exponents = tuple(_integer(e) for e in self.exponents)
        except TypeError as exc:
            raise TypeError(f"segment sizes and exponents must be integers ({exc})") from None
        if len(sizes) != len(exponents) or not sizes:
            raise ValueError(
                f"need one exponent per segment, got {len(exponents)} for {len(sizes)} segments"
            )
        if min(sizes) < 0:
            raise ValueError("segment sizes must be non-negative")
        if not all(MIN_EXPONENT <= e <= MAX_EXPONENT for e in exponents):
            raise ValueError(f"exponents must lie in [{MIN_EXPONENT}, {MAX_EXPONENT}]")
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "exponents", exponents)

    @staticmethod
    def initial_exponents(trainable: Sequence[bool]) -> tuple[int, ...]:
        """Round one's exponents for tensors that are trainable (``True``) or buffers."""
        return tuple(INITIAL_EXPONENT if t else INITIAL_STATE_EXPONENT for t in trainable)

    @classmethod
    def initial(cls, sizes: Sequence[int]) -> TensorRanges:
        """Round one's ranges for trainable tensors of ``sizes``."""
        return cls(tuple(sizes), cls.initial_exponents([True] * len(sizes)))

    @property
    def dim(self) -> int:
        """Values the segments cover (the protocol vector's length)."""
        return sum(self.sizes)

    @property
    def stat_values(self) -> int:
        """Integers each site adds to the sum for the statistic."""
        return len(self.sizes) * BUCKETS

    def check_covers(self, dim: int) -> None:
        """Raise ``ValueError`` unless these ranges cover a vector of ``dim`` values."""
        if self.dim != dim:
            raise ValueError(f"the ranges cover {self.dim} values, the round's vector {dim}")

    def _segments(self) -> zip:
        """``(start, size)`` of each segment."""
        return zip(np.cumsum((0, *self.sizes[:-1])).tolist(), self.sizes, strict=True)

    def _per_segment(self, values: np.ndarray, factors: np.ndarray) -> np.ndarray:
        self.check_covers(values.size)
        for (start, size), factor in zip(self._segments(), factors, strict=True):
            values[start : start + size] *= factor
        return values

    def scaled(self, update: np.ndarray, share: float) -> np.ndarray:
        """``update * share`` in units of each segment's range (float32, a new array): what a
        site quantizes on the grid ``[-1, 1]``."""
        factors = np.ldexp(np.float64(share), [-e for e in self.exponents])
        return self._per_segment(np.array(update, dtype=np.float32), factors)

    def unscale(self, values: np.ndarray) -> np.ndarray:
        """Values in range units back to the update's units, in place (and returned)."""
        return self._per_segment(values, np.ldexp(1.0, list(self.exponents)))

    def octaves(self, scaled: np.ndarray) -> np.ndarray:
        """This site's statistic: per segment, the one-hot octave of its largest ``|value|``
        in range units (zeros for an empty segment), as ``len(sizes) * BUCKETS`` integers."""
        self.check_covers(scaled.size)
        stat = np.zeros((len(self.sizes), BUCKETS), dtype=np.uint8)
        for j, (start, size) in enumerate(self._segments()):
            top = float(np.max(np.abs(scaled[start : start + size]))) if size else 0.0
            if top != 0.0:  # an empty or all-zero tensor reports nothing
                stat[j, _octave(top) - LOW] = 1
        return stat.reshape(-1)

    def check_counts(self, counts: np.ndarray, contributors: int) -> None:
        """Raise ``ValueError`` unless the summed statistic is one that ``contributors``
        honest sites could have sent: per tensor at most one report per site (an empty
        segment: none). A site that sent more than a one-hot row (or a negative one, which
        wraps in the ring) would otherwise push the ranges."""
        rows = np.asarray(counts, dtype=np.int64).reshape(len(self.sizes), BUCKETS)
        reports = rows.sum(axis=1)
        empty = np.array(self.sizes) == 0
        if (rows < 0).any() or (reports > contributors).any() or reports[empty].any():
            raise ValueError(
                f"the range statistic counts more reports than the {contributors} sites in "
                "the sum could have sent (a site sent more than one octave per tensor)"
            )

    def next(self, counts: np.ndarray) -> tuple[int, ...]:
        """The next round's exponents from the summed statistic (``counts``, as
        :meth:`octaves` lays it out): each segment's range moves to the top of its highest
        occupied octave; a segment no site reported on keeps its range."""
        counts = np.asarray(counts).reshape(len(self.sizes), BUCKETS)
        moved = []
        for exponent, row in zip(self.exponents, counts, strict=True):
            occupied = np.flatnonzero(row)
            shift = int(occupied[-1]) + LOW if occupied.size else 0
            moved.append(min(MAX_EXPONENT, max(MIN_EXPONENT, exponent + shift)))
        return tuple(moved)

    def digest(self) -> bytes:
        """SHA-256 of the segments and exponents (parties check they agree)."""
        data = np.array([*self.sizes, *self.exponents], dtype="<i8").tobytes()
        return hashlib.sha256(b"fedshield ranges v1" + data).digest()


def _integer(value: object) -> int:
    if isinstance(value, bool):
        raise TypeError(f"got a bool, {value}")
    return operator.index(value)


def _octave(top: float) -> int:
    """The bucket of a largest ``|value|`` ``top``: the ``k`` with ``2^(k-1) < top <= 2^k``,
    clamped to ``[LOW, HIGH]`` (NaN counts as the top bucket)."""
    if not np.isfinite(top):
        return HIGH
    if top <= 2.0**LOW:
        return LOW
    mantissa, exponent = np.frexp(top)  # top = mantissa * 2^exponent, mantissa in [0.5, 1)
    k = int(exponent) - (mantissa == 0.5)
    return min(HIGH, k)


@dataclass(frozen=True)
class Grid:
    """Where a site's update meets the quantizer: one fixed range ``[-clip, clip]`` (``ranges``
    ``None``), or the round's :class:`TensorRanges` (``clip`` ``None``; the grid is then
    ``[-1, 1]`` in range units). Both protocols encode and decode through it.
    """

    clip: float | None
    ranges: TensorRanges | None
    quant_bits: int

    def __post_init__(self) -> None:
        if (self.clip is None) == (self.ranges is None):
            raise ValueError(
                "give either a fixed clip or the round's ranges (adaptive), not both or neither"
            )

    @classmethod
    def for_round(
        cls, protocol: str, clip: float | None, ranges: TensorRanges | None, quant_bits: int
    ) -> Grid:
        """The round's grid for ``protocol``: a ``ConfigError`` naming what is missing when
        the ranges are given without ``clip=None`` or missing with it."""
        if ranges is not None and not isinstance(ranges, TensorRanges):
            raise TypeError(f"ranges must be a TensorRanges, got {type(ranges).__name__}")
        try:
            return cls(clip, ranges, quant_bits)
        except ValueError:
            raise ConfigError(
                f"{protocol}: a round needs per-tensor ranges exactly when the config has no "
                f"fixed clip (clip={clip}, ranges {'given' if ranges else 'missing'})"
            ) from None

    @property
    def _quant(self) -> dict:
        return {"clip": 1.0 if self.clip is None else self.clip, "quant_bits": self.quant_bits}

    @property
    def stat_values(self) -> int:
        """Integers a site adds for the range statistic (0 with a fixed clip)."""
        return 0 if self.ranges is None else self.ranges.stat_values

    def encode(
        self, update: np.ndarray, share: float, *, seed: int, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(levels, statistic)``: the stochastically rounded levels of ``update * share``
        (written into ``out`` when given; the same ``seed`` gives the same levels) and this
        site's range statistic (empty with a fixed clip)."""
        # Clip, then weight: a site's levels then stay within ``share`` of the grid's middle,
        # which the decoders check (a weight-0 site with top levels would otherwise pass).
        if self.ranges is None:
            scaled = update
            if share != 1:
                scaled = np.clip(update, -self.clip, self.clip) * np.float32(share)
            stat = np.zeros(0, dtype=np.uint8)
        else:
            scaled = self.ranges.scaled(update, 1.0)
            stat = self.ranges.octaves(scaled)  # before weighting: weights stay hidden
            if share != 1:
                np.clip(scaled, -1.0, 1.0, out=scaled)
                scaled *= np.float32(share)
        return ring.quantize(scaled, seed=seed, out=out, **self._quant), stat

    def sent(self, levels: np.ndarray, share: float) -> np.ndarray:
        """The float32 update the sum will count of a site that sent ``levels`` (from
        :meth:`encode` with this ``share``): ``dequantized / share``, for error feedback."""
        sent = self.restore(ring.dequantize(levels, **self._quant))
        if share != 1:
            sent /= np.float32(share)
        return sent

    def sent_from(self, update: np.ndarray, share: float, *, seed: int) -> np.ndarray:
        """:meth:`sent` of the levels :meth:`encode` makes of ``update`` with ``seed``."""
        return self.sent(self.encode(update, share, seed=seed)[0], share)

    def decode_sum(self, level_sum: np.ndarray, count: int) -> np.ndarray:
        """The float64 sum, in the update's units, of ``count`` sites' scaled updates."""
        return self.restore(ring.dequantize_sum(level_sum, count, **self._quant))

    def decode_mean(self, level_sum: np.ndarray, total_weight: int) -> np.ndarray:
        """The weighted mean, in the update's units, from ``sum_i w_i q_i`` and ``sum_i w_i``."""
        return self.restore(ring.dequantize_mean(level_sum, total_weight, **self._quant))

    def restore(self, values: np.ndarray) -> np.ndarray:
        """Values on the grid back to the update's units (in place with ranges)."""
        return values if self.ranges is None else self.ranges.unscale(values)

    def decode_checked(
        self, values: np.ndarray, count: int, *, config, dim: int,
        ranges: TensorRanges | None,
    ) -> tuple[np.ndarray, int, np.ndarray | None]:  # fmt: skip
        """``(sum_i W_i x_i, sum_i W_i, range statistic)`` from the summed ring values of
        ``count`` clients (``[levels][weight digits][count][statistic]``; ``config``: a
        ``SecAggConfig`` or ``HEConfig``), after checking the sum is one ``count`` clients on
        this grid could send (:func:`~fedshield.crypto.ring.check_on_grid`) and that the
        statistic counts them.

        Raises:
            ValueError: the sum, its count or its statistic is not one honest clients could
                send (each protocol turns it into its abort).
        """
        digits = values[dim : dim + config.weight_digits]
        weight = ring.from_digits(digits, quant_bits=config.quant_bits)
        integer = config.weighting == "integer"
        counted = count if integer else int(values[dim + config.weight_digits])
        if counted != count:
            raise ValueError(f"the sum holds {counted} updates, {count} were named")
        ring.check_on_grid(values[:dim], digits, count=count, weight=weight,
                           quant_bits=config.quant_bits, weight_bits=config.weight_bits,
                           integer=integer)  # fmt: skip
        counts = None
        if ranges is not None:
            counts = values[dim + config.tail_values :].astype(np.int64)
            ranges.check_counts(counts, count)
        if integer:
            total = self.decode_mean(values[:dim], weight).astype(np.float64)
            total *= weight
            return total, weight, counts
        total = self.decode_sum(values[:dim], count)  # sum_i (W_i / top) x_i, a new array
        top = ring.weight_top(config.weight_bits)
        if top != 1:  # unweighted: times 1 changes nothing
            total *= top
        return total, weight, counts
