"""Error feedback: what compression left out of one round's update travels in the next.

Seide et al. (2014, "1-bit SGD") and Karimireddy et al. (2019, "Error feedback fixes SignSGD"):
the client adds its residual to the fresh update, compresses the sum, and keeps as the new
residual whatever the compressed message does not carry. The sum of what was sent then trails
the sum of the true updates by exactly the current residual, which stays bounded.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from fedshield.compress._parallel import parallel_kernel

__all__ = ["ErrorFeedback", "residual_reference"]

_BLOCK = 1 << 16


@parallel_kernel
def _residual(corrected, indices, sent, out):  # pragma: no cover - compiled
    """out = corrected - scatter(indices, sent); all of ``corrected`` where nothing was sent."""
    n = corrected.size
    for block in prange((n + _BLOCK - 1) // _BLOCK):
        start = block * _BLOCK
        for i in range(np.uint64(start), np.uint64(min(start + _BLOCK, n))):
            out[i] = corrected[i]
    for j in prange(indices.size):
        out[indices[j]] = corrected[indices[j]] - sent[j]


def residual_reference(
    corrected: np.ndarray, indices: np.ndarray | None, sent: np.ndarray
) -> np.ndarray:
    """numpy oracle of the residual update."""
    out = corrected.astype(np.float32, copy=True)
    if indices is None:
        return out - sent
    out[indices] -= sent
    return out


class ErrorFeedback:
    """One client's residual across rounds.

    Example:
        >>> import numpy as np
        >>> feedback = ErrorFeedback(3)
        >>> corrected = feedback.compensate(np.array([0.3, -0.2, 0.05], np.float32))
        >>> feedback.keep_unsent(corrected, np.array([0.25, -0.25, 0.0], np.float32))
        >>> np.round(feedback.residual, 2).tolist()
        [0.05, 0.05, 0.05]
    """

    def __init__(self, dim: int) -> None:
        self.residual = np.zeros(dim, dtype=np.float32)

    def compensate(self, update: np.ndarray) -> np.ndarray:
        """The update plus the residual: what this round should try to send."""
        if update.shape != self.residual.shape:
            raise ValueError(f"expected {self.residual.size} values, got {update.size}")
        return (update + self.residual).astype(np.float32, copy=False)

    def keep_unsent(
        self, corrected: np.ndarray, sent: np.ndarray, indices: np.ndarray | None = None
    ) -> None:
        """Keep what was not sent: ``corrected`` minus ``sent`` (placed at ``indices``).

        ``sent`` is what the receiver decodes from this client's message (dequantized values);
        ``indices`` are the coordinates it covers, ``None`` for all of them. A client whose
        message never left passes ``sent`` empty with ``indices`` empty: everything carries.
        """
        corrected = np.ascontiguousarray(corrected, dtype=np.float32)
        sent = np.ascontiguousarray(sent, dtype=np.float32)
        if indices is None:
            indices = np.arange(corrected.size, dtype=np.int64)
        indices = np.ascontiguousarray(indices, dtype=np.int64)
        if sent.shape != indices.shape or corrected.shape != self.residual.shape:
            raise ValueError("sent must match indices, and corrected the residual's length")
        _residual(corrected, indices, sent, self.residual)
