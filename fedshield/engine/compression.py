"""The client-side compression chain that runs before protection.

error feedback (add the site's residual) → sparsify (rand-k with the round's shared seed, or
top-k) → the protocol quantizes and bit-packs (shared range for ``secagg`` and ``he``, per-chunk
for ``plain``) → the residual keeps what the protocol did not carry.

Rand-k's coordinates are public before training (the round's shared seed), so by default a
site trains only them: subspace training (:mod:`fedshield.engine.subspace`). Its update then
lies wholly in the kept coordinates and nothing is dropped; error feedback carries only what
quantization rounds off. ``train_all=True`` keeps the classic way: train every coordinate and
send the kept ones unscaled, error feedback carrying the rest to later rounds (measured on
BreastMNIST, 4 sites, 10 rounds at 10%: about 0.06 AUC below plain fp32, where subspace
training is within 0.01; ``docs/compression.md``). FedSGD's one gradient step is always the
classic way.

Only the trainable part of the update is sparsified and error-corrected. Buffers (BatchNorm
running statistics) are state, not steps: each round's delta re-measures the whole gap between
the global value and the site's, so a residual would count the same gap twice (measured on
BreastMNIST: rand-k 10% with error feedback on the running variances drove them negative and
the model to AUC 0.5). Buffers are few; they always travel dense and without a residual.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from fedshield.compress import ErrorFeedback, derive_seed, k_for, randk, topk_exact
from fedshield.errors import ConfigError
from fedshield.protocols.ranges import TensorRanges

__all__ = ["CompressedUpdate", "Compression", "UpdateCompressor"]

SPARSIFIERS = ("randk", "topk")


@dataclass(frozen=True)
class Compression:
    """The compression chain's options: ``sparsify`` is ``None``, ``"randk"`` or ``"topk"``."""

    sparsify: str | None = None
    fraction: float = 1.0
    error_feedback: bool = False
    train_all: bool = False  # rand-k: train every coordinate (the classic way), not the kept

    def __post_init__(self) -> None:
        if self.sparsify is not None and self.sparsify not in SPARSIFIERS:
            raise ConfigError(f"unknown sparsifier {self.sparsify!r}; use randk or topk")
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"the kept fraction must be in (0, 1], got {self.fraction}")
        if self.train_all and self.sparsify != "randk":
            raise ConfigError(
                "--train-all-coordinates chooses how rand-k sites train; it needs "
                "--sparsify randk:F (top-k and dense updates always train every coordinate)"
            )

    @property
    def subspace(self) -> bool:
        """Whether sites train only the round's kept coordinates (rand-k, by default)."""
        return self.sparsify == "randk" and not self.train_all

    def for_algorithm(self, algorithm: str) -> Compression:
        """This chain as ``algorithm``'s sites run it: FedSGD sends one gradient, taken at the
        global model, so its rand-k is always the classic way."""
        return replace(self, train_all=True) if self.subspace and algorithm == "fedsgd" else self

    @classmethod
    def parse(
        cls, sparsify: str | None, *, error_feedback: bool = False, train_all: bool = False
    ) -> Compression:
        """From ``--sparsify randk:0.1`` / ``topk:0.01`` (or ``None``), ``--error-feedback``
        and ``--train-all-coordinates``."""
        if not sparsify:
            return cls(error_feedback=error_feedback, train_all=train_all)
        kind, _, fraction = sparsify.partition(":")
        try:
            value = float(fraction)
        except ValueError:
            raise ConfigError(
                f"--sparsify {sparsify!r}: write randk:F or topk:F with F the kept fraction, "
                "e.g. randk:0.1"
            ) from None
        return cls(kind, value, error_feedback=error_feedback, train_all=train_all)

    def describe(self) -> dict:
        """The chain as plain data (``result.json``)."""
        return {
            "sparsify": self.sparsify,
            "fraction": self.fraction if self.sparsify else None,
            "error_feedback": self.error_feedback,
            "local_training": "kept coordinates" if self.subspace else "all coordinates",
        }


@dataclass(frozen=True)
class CompressedUpdate:
    """One client's update after the chain, before the protocol.

    ``values`` go to the protocol; ``indices`` are the coordinates they cover (``None``: all);
    ``corrected`` is the update plus the residual, kept for error feedback.
    """

    values: np.ndarray
    indices: np.ndarray | None
    corrected: np.ndarray


class UpdateCompressor:
    """Runs the chain on one site's updates and keeps that site's residual.

    The server keeps one too (it never allocates a residual), for the round's shared rand-k
    coordinates (:meth:`shared_indices`) and to scatter an aggregate back (:meth:`expand`).
    """

    def __init__(
        self,
        compression: Compression,
        *,
        dim: int,
        seed: int,
        n_trainable: int | None = None,
    ) -> None:
        if not isinstance(compression, Compression):
            raise TypeError(f"compression must be a Compression, got {type(compression).__name__}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.compression = compression
        self.dim = dim
        self.seed = seed
        self.n_trainable = dim if n_trainable is None else n_trainable
        self._buffers = np.arange(self.n_trainable, dim, dtype=np.int64)
        fraction = compression.fraction
        self.k_trainable = k_for(self.n_trainable, fraction) if compression.sparsify else None
        # Values each client sends: the kept trainable values and every buffer.
        self.k = None if self.k_trainable is None else self.k_trainable + self._buffers.size
        self.feedback: ErrorFeedback | None = None  # the residual, made on first use
        self._drawn: tuple[int, np.ndarray] | None = None  # the last round's rand-k indices

    @property
    def protocol_dim(self) -> int:
        """Length of the vectors the protocol aggregates (``k`` under rand-k)."""
        return self.k if self.compression.sparsify == "randk" else self.dim

    def shared_indices(self, round: int) -> np.ndarray | None:
        """Rand-k's coordinates for ``round``: public, the same at every client and the server.

        Rounds walk through one random order of the coordinates in blocks of ``k`` places,
        then draw a new order (rand-k without replacement): a cycle of ``ceil(n / k)`` rounds
        visits every coordinate, the last block taking the order's last ``k`` places (when
        ``k`` does not divide ``n`` it repeats a few of the block before). Drawn independently
        each round, 12% of the coordinates would wait more than 20 rounds at 10% (0.9^20),
        and the global model would lag there.
        """
        if self.compression.sparsify != "randk":
            return None
        if self._drawn is None or self._drawn[0] != round:  # a round asks several times
            self._drawn = (round, self._draw(round))
        return self._drawn[1]

    def _draw(self, round: int) -> np.ndarray:
        n, k = self.n_trainable, self.k_trainable
        cycle, block = divmod(round - 1, -(-n // k))
        seed = derive_seed("randk", self.seed, cycle)
        if block < n // k:
            kept = randk(n, k, seed=seed, block=block)
        else:  # the order's last k places: all but its first n - k
            rest = np.ones(n, dtype=bool)
            rest[randk(n, n - k, seed=seed)] = False
            kept = np.flatnonzero(rest)
        indices = np.concatenate([kept, self._buffers])
        indices.flags.writeable = False  # shared by every caller of the round
        return indices

    def training_subspace(self, round: int) -> tuple[np.ndarray, float] | None:
        """Subspace training's ``(coordinates, lr_scale)`` for ``round``: the kept trainable
        coordinates, and the factor on their local steps that gives each coordinate, trained
        one round in ``n_trainable / k``, the step budget it has in dense training (``None``
        unless :attr:`Compression.subspace`)."""
        if not self.compression.subspace:
            return None
        kept = self.shared_indices(round)[: self.k_trainable]
        return kept, self.n_trainable / self.k_trainable

    def compress(self, round: int, delta: np.ndarray) -> CompressedUpdate:
        """Error feedback (add the residual), then sparsification, of one update."""
        if self.compression.error_feedback and self.feedback is None:
            self.feedback = ErrorFeedback(self.dim)
        corrected = self.feedback.compensate(delta) if self.feedback else delta
        if self.compression.sparsify == "topk":
            kept = topk_exact(corrected[: self.n_trainable], self.k_trainable)
            indices = np.concatenate([kept, self._buffers])
        else:
            indices = self.shared_indices(round)
        values = corrected if indices is None else np.ascontiguousarray(corrected[indices])
        return CompressedUpdate(values, indices, corrected)

    def keep_residual(self, update: CompressedUpdate, sent: np.ndarray | None) -> None:
        """Keep, as the residual, what the protocol's message did not carry (all of it if
        the site's message never went out)."""
        if not self.feedback:
            return
        if sent is None:
            self.feedback.keep_unsent(update.corrected, np.zeros(0, np.float32), np.zeros(0))
        else:
            self.feedback.keep_unsent(update.corrected, sent, update.indices)
        self.feedback.residual[self.n_trainable :] = 0.0  # buffers: state, never a residual

    def expand(self, indices: np.ndarray | None, weighted_sum: np.ndarray) -> np.ndarray:
        """A rand-k aggregate scattered back to the full vector (zeros elsewhere)."""
        if indices is None:
            return weighted_sum
        full = np.zeros(self.dim, dtype=weighted_sum.dtype)
        full[indices] = weighted_sum
        return full

    def ranges(
        self, round: int, tensor_sizes: Sequence[int], exponents: Sequence[int]
    ) -> TensorRanges:
        """The round's per-tensor ranges over the protocol vector: each tensor's segment
        holds all its values, or under rand-k those the round keeps (its coordinates are
        sorted, so every tensor's kept values stay together)."""
        indices = self.shared_indices(round)
        if indices is None:
            return TensorRanges(tuple(tensor_sizes), tuple(exponents))
        bounds = np.searchsorted(indices, np.cumsum([0, *tensor_sizes]))
        return TensorRanges(tuple(np.diff(bounds).tolist()), tuple(exponents))

    def quant_seed(self, site: int, round: int) -> int:
        """The stochastic-rounding stream of one site in one round (reproducible runs)."""
        return derive_seed("quantize", self.seed, site, round)
