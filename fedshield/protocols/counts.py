"""The grid of a session that sums integer counts exactly (evaluation summaries under
``secagg``, :mod:`fedshield.engine.secure_eval`): each count is sent as its own ring level,
with no quantization, no rounding and every site's weight 1, and the ring sum decodes to the
integer sum of the sites' counts. It has :class:`~fedshield.protocols.ranges.Grid`'s interface
(as :class:`~fedshield.protocols.noisy.NoisyGrid` does), so the SecAgg+ sessions need no
branch of their own.

``max_count`` is public and bounds every entry a site may send; the ring holds
``ceil(log2(n · max_count + 1))`` bits (:meth:`SecAggConfig.bits
<fedshield.protocols.secagg.config.SecAggConfig.bits>`), so the sum of ``n`` sites never
wraps. A count beyond ``max_count`` (or a fraction, a negative, a NaN) is refused at the site
before anything is sent: a silent wrap-around would be a wrong result, not an error.
"""

from __future__ import annotations

import math

import numpy as np

from fedshield.errors import ConfigError, InvalidMessage
from fedshield.protocols.noisy import check_unit_weights

__all__ = ["MAX_COUNT_LIMIT", "CountGrid", "count_ring_bits"]

MAX_COUNT_LIMIT = 2**24 - 1  # counts travel as float32 vectors: integers exact up to 2^24


def count_ring_bits(n: int, max_count: int) -> int:
    """Bits of the ring that holds the sum of ``n`` sites' counts of at most ``max_count``."""
    return max(1, math.ceil(math.log2(n * max_count + 1)))


class CountGrid:
    """Integer counts in ``[0, max_count]`` as ring levels, summed exactly."""

    stat_values = 0  # no range statistic

    def __init__(self, max_count: int) -> None:
        if isinstance(max_count, bool) or not isinstance(max_count, int):
            raise TypeError(f"max_count must be an int, got {type(max_count).__name__}")
        if not 1 <= max_count <= MAX_COUNT_LIMIT:
            raise ConfigError(f"max_count must lie in [1, {MAX_COUNT_LIMIT}], got {max_count}")
        self.max_count = max_count

    def check(self, counts: np.ndarray) -> np.ndarray:
        """``counts`` as int64 after checking each is a finite integer in ``[0, max_count]``.

        Raises:
            ConfigError: a count that is not such an integer (the site's own data does not
                fit the run's public bound: nothing is sent).
        """
        values = np.asarray(counts, dtype=np.float64)
        if not np.isfinite(values).all() or (values != np.round(values)).any():
            raise ConfigError("counts must be finite integers (a NaN, infinity or fraction)")
        if values.size and (values.min() < 0 or values.max() > self.max_count):
            raise ConfigError(
                f"counts must lie in [0, {self.max_count}] (the run's public max_count), got "
                f"[{values.min():.0f}, {values.max():.0f}]: a larger count would wrap around "
                "the ring and sum to a wrong result, so this site sends nothing"
            )
        return values.astype(np.int64)

    def encode(
        self, update: np.ndarray, share: float, *, seed: int, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(levels, empty statistic)``: the counts themselves (into ``out`` when given);
        ``seed`` is not used (nothing is rounded)."""
        _check_unweighted(share)
        levels = self.check(update)
        if out is None:
            return levels.astype(np.uint64), np.zeros(0, np.uint8)
        out[...] = levels
        return out, np.zeros(0, np.uint8)

    def sent_from(self, update: np.ndarray, share: float, *, seed: int) -> np.ndarray:
        """What the sum counts of this site's input: the counts, unchanged (float32)."""
        _check_unweighted(share)
        return self.check(update).astype(np.float32)

    def decode_checked(
        self, values: np.ndarray, count: int, *, config, dim: int, ranges=None
    ) -> tuple[np.ndarray, int, None]:
        """``(summed counts as int64, count, None)`` from the ring sum of ``count`` sites
        (``[counts][weight digits][count]``), after checking each weight was 1, that the sum
        counts ``count`` sites, and that no entry exceeds ``count · max_count``.

        Raises:
            ValueError: a sum that ``count`` honest sites could not send.
        """
        check_unit_weights(values, count, config=config, dim=dim, what="count inputs")
        sums = np.asarray(values[:dim]).astype(np.int64)
        if sums.size and int(sums.max()) > count * self.max_count:
            raise ValueError(
                f"a summed count of {int(sums.max())} exceeds what {count} sites of at most "
                f"{self.max_count} each could send"
            )
        return sums, count, None


def _check_unweighted(share: float) -> None:
    if share != 1:
        raise InvalidMessage(f"counts are summed unweighted (share 1), got share {share}")
