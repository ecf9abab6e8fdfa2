"""FedAvg's server rule: the sample-weighted mean of the revealed updates (McMahan et al., 2017)."""

from __future__ import annotations

import numpy as np

from fedshield.errors import ProtocolAbort

__all__ = ["weighted_mean"]


def weighted_mean(weighted_sum: np.ndarray, total_weight: float) -> np.ndarray:
    """Return ``weighted_sum / total_weight`` as float32.

    Works on what every protocol reveals (a weighted sum and its total weight), so dropped clients
    are simply absent and the weights renormalise over the contributors.

    Raises:
        ProtocolAbort: if the total weight is not positive (nobody contributed).
    """
    if not np.isfinite(total_weight) or total_weight <= 0:
        raise ProtocolAbort(f"cannot average with total weight {total_weight}")
    return (np.asarray(weighted_sum, dtype=np.float64) / total_weight).astype(np.float32)
