"""The client-side encoder chain that runs before protection.

error feedback (add the site's residual) → sparsify (rand-k with the round's shared seed, or
top-k) → the protocol quantizes and bit-packs (shared range for ``secagg`` and ``he``, per-chunk
for ``plain``) → the residual keeps what the protocol did not carry.

Rand-k is sent unscaled: with error feedback the coordinates left out this round travel later;
without it, a rand-k update is a shrunken (biased) step, as with any sparsifier.

Only the trainable part of the update is sparsified and error-corrected. Buffers (BatchNorm
running statistics) are state, not steps: each round's delta re-measures the whole gap between
the global value and the site's, so a residual would count the same gap twice (measured on
BreastMNIST: rand-k 10% with error feedback on the running variances drove them negative and
the model to AUC 0.5). Buffers are few; they always travel dense and without a residual.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedshield.compress import ErrorFeedback, derive_seed, k_for, randk, topk_exact
from fedshield.errors import ConfigError

__all__ = ["EncodedUpdate", "Encoding", "UpdateEncoder"]

SPARSIFIERS = ("randk", "topk")


@dataclass(frozen=True)
class Encoding:
    """The encoder chain's options: ``sparsify`` is ``None``, ``"randk"`` or ``"topk"``."""

    sparsify: str | None = None
    fraction: float = 1.0
    error_feedback: bool = False

    def __post_init__(self) -> None:
        if self.sparsify is not None and self.sparsify not in SPARSIFIERS:
            raise ConfigError(f"unknown sparsifier {self.sparsify!r}; use randk or topk")
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"the kept fraction must be in (0, 1], got {self.fraction}")

    @classmethod
    def parse(cls, sparsify: str | None, *, error_feedback: bool = False) -> Encoding:
        """From ``--sparsify randk:0.1`` / ``topk:0.01`` (or ``None``) and ``--error-feedback``."""
        if not sparsify:
            return cls(error_feedback=error_feedback)
        kind, _, fraction = sparsify.partition(":")
        try:
            value = float(fraction)
        except ValueError:
            raise ConfigError(
                f"--sparsify {sparsify!r}: write randk:F or topk:F with F the kept fraction, "
                "e.g. randk:0.1"
            ) from None
        return cls(sparsify=kind, fraction=value, error_feedback=error_feedback)

    def describe(self) -> dict:
        """The chain as plain data (``result.json``)."""
        return {
            "sparsify": self.sparsify,
            "fraction": self.fraction if self.sparsify else None,
            "error_feedback": self.error_feedback,
        }


@dataclass(frozen=True)
class EncodedUpdate:
    """One client's update after the chain, before the protocol.

    ``values`` go to the protocol; ``indices`` are the coordinates they cover (``None``: all);
    ``corrected`` is the update plus the residual, kept for error feedback.
    """

    values: np.ndarray
    indices: np.ndarray | None
    corrected: np.ndarray


class UpdateEncoder:
    """Runs the chain for every site of a federation and keeps their residuals."""

    def __init__(
        self,
        encoding: Encoding,
        *,
        dim: int,
        n_sites: int,
        seed: int,
        n_trainable: int | None = None,
    ) -> None:
        self.encoding = encoding
        self.dim = dim
        self.seed = seed
        self.n_trainable = dim if n_trainable is None else n_trainable
        self._buffers = np.arange(self.n_trainable, dim, dtype=np.int64)
        self.k_trainable = k_for(self.n_trainable, encoding.fraction) if encoding.sparsify else None
        # Values each client sends: the kept trainable values and every buffer.
        self.k = None if self.k_trainable is None else self.k_trainable + self._buffers.size
        self.feedback = (
            [ErrorFeedback(dim) for _ in range(n_sites)] if encoding.error_feedback else None
        )

    @property
    def protocol_dim(self) -> int:
        """Length of the vectors the protocol aggregates (``k`` under rand-k)."""
        return self.k if self.encoding.sparsify == "randk" else self.dim

    def shared_indices(self, round: int) -> np.ndarray | None:
        """Rand-k's coordinates for ``round``: public, the same at every client and the server.

        Rounds walk through the disjoint blocks of one random order of the coordinates, then
        draw a new order (rand-k without replacement): every coordinate travels at least once
        per ``n_trainable // k`` rounds. Drawn independently each round, 12% of the coordinates
        would wait more than 20 rounds at 10% (0.9^20), and the global model would lag there.
        """
        if self.encoding.sparsify != "randk":
            return None
        blocks = max(1, self.n_trainable // self.k_trainable)
        cycle, block = divmod(round - 1, blocks)
        seed = derive_seed("randk", self.seed, cycle)
        kept = randk(self.n_trainable, self.k_trainable, seed=seed, block=block)
        return np.concatenate([kept, self._buffers])

    def encode(self, site: int, round: int, delta: np.ndarray) -> EncodedUpdate:
        """Error feedback (add the site's residual), then sparsification, of one update."""
        corrected = self.feedback[site].compensate(delta) if self.feedback else delta
        if self.encoding.sparsify == "topk":
            kept = topk_exact(corrected[: self.n_trainable], self.k_trainable)
            indices = np.concatenate([kept, self._buffers])
        else:
            indices = self.shared_indices(round)
        values = corrected if indices is None else np.ascontiguousarray(corrected[indices])
        return EncodedUpdate(values, indices, corrected)

    def record(self, site: int, encoded: EncodedUpdate, sent: np.ndarray | None) -> None:
        """Keep, as the site's residual, what its message did not carry (all of it if unsent)."""
        if not self.feedback:
            return
        feedback = self.feedback[site]
        if sent is None:
            feedback.record(encoded.corrected, np.zeros(0, np.float32), np.zeros(0))
        else:
            feedback.record(encoded.corrected, sent, encoded.indices)
        feedback.residual[self.n_trainable :] = 0.0  # buffers: state, never a residual

    def expand(self, indices: np.ndarray | None, weighted_sum: np.ndarray) -> np.ndarray:
        """A rand-k aggregate scattered back to the full vector (zeros elsewhere)."""
        if indices is None:
            return weighted_sum
        full = np.zeros(self.dim, dtype=weighted_sum.dtype)
        full[indices] = weighted_sum
        return full

    def quant_seed(self, site: int, round: int) -> int:
        """The stochastic-rounding stream of one site in one round (reproducible runs)."""
        return derive_seed("quantize", self.seed, site, round)
