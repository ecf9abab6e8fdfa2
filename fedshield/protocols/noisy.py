"""The grid of a round with distributed differential privacy: each site encodes its update as
the distributed discrete Gaussian's noisy levels (:mod:`fedshield.crypto.ddg`) in place of the
quantizer's, and both protocols sum them exactly as they sum levels (``secagg`` in its ring,
``he`` in BFV fields). It has :class:`~fedshield.protocols.ranges.Grid`'s interface, so the
sessions need no branch of their own. Every site's weight is 1 (DP-FedAvg's unweighted sum;
the engine divides by the planned number of sites).
"""

from __future__ import annotations

import numpy as np

from fedshield.crypto import ring
from fedshield.crypto.ddg import DiscreteGaussianEncoding

__all__ = ["NoisyGrid"]


class NoisyGrid:
    """Encoding and decoding through a :class:`DiscreteGaussianEncoding`."""

    stat_values = 0  # no range statistic: the L2 clip is fixed

    def __init__(self, encoding: DiscreteGaussianEncoding) -> None:
        if not isinstance(encoding, DiscreteGaussianEncoding):
            raise TypeError(
                f"encoding must be a DiscreteGaussianEncoding, got {type(encoding).__name__}"
            )
        self.encoding = encoding

    def encode(
        self, update: np.ndarray, share: float, *, seed: int, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(levels, empty statistic)``: this site's noisy levels (into ``out`` when given).
        ``seed`` is not used: the rounding and the noise come from the OS CSPRNG."""
        _check_unweighted(share)
        levels = self.encoding.encode(update)
        if out is None:
            return levels.astype(np.uint64), np.zeros(0, np.uint8)
        out[...] = levels
        return out, np.zeros(0, np.uint8)

    def sent_from(self, update: np.ndarray, share: float, *, seed: int) -> np.ndarray:
        """What the sum counts of this site's update, before the noise: the update clipped to
        ``C`` (float32; the unbiased rounding is left out), for error feedback."""
        _check_unweighted(share)
        return self.encoding.clipped(update).astype(np.float32)

    def decode_checked(
        self, values: np.ndarray, count: int, *, config, dim: int, ranges=None
    ) -> tuple[np.ndarray, int, None]:
        """``(noisy sum, count, None)`` from the summed ring values of ``count`` clients
        (``[levels][weight digits][count]``), after checking that each weight was 1, that the
        sum counts ``count`` clients, at least the encoding's ``min_sites``, and that its levels
        are ones they could send.

        Raises:
            ValueError: a sum honest sites could not send, or one with too little noise.
        """
        check_unit_weights(values, count, config=config, dim=dim, what="updates")
        self.encoding.check_sum(values[:dim], count)
        return self.encoding.decode_sum(values[:dim], count), count, None


def check_unit_weights(values: np.ndarray, count: int, *, config, dim: int, what: str) -> None:
    """Check the weight tail of a ring sum of ``count`` unweighted inputs (``[values][weight
    digits][count]``): the summed weights and the count must both be ``count``.

    Raises:
        ValueError: a sum that ``count`` sites of weight 1 could not send.
    """
    digits = values[dim : dim + config.weight_digits]
    weight = ring.from_digits(digits, quant_bits=config.quant_bits)
    counted = count
    if config.weighting == "fraction":
        counted = int(values[dim + config.weight_digits])
    if weight != count or counted != count:
        raise ValueError(
            f"the sum holds {counted} {what} of total weight {weight}, {count} sites of weight 1 "
            "were named"
        )


def _check_unweighted(share: float) -> None:
    if share != 1:
        raise ValueError(f"distributed DP sums unweighted updates (share 1), got share {share}")
