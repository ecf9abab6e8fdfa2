"""The global model as one float32 vector, the broadcast that carries it, and the rule that
moves it each round.

The server holds one. Under ``he`` the server never sees the aggregate, so every site holds
one instead and applies the aggregate it decrypted: the same rule on the same bits gives the
same model everywhere (FedAdam included).
"""

from __future__ import annotations

import numpy as np

from fedshield import wire
from fedshield.aggregation import ServerOptimizer, weighted_mean
from fedshield.engine.compression import UpdateCompressor
from fedshield.engine.paramspec import ParamSpec
from fedshield.protocols.ranges import TensorRanges
from fedshield.protocols.registry import MODEL_BROADCAST

__all__ = ["GlobalModel", "he_round_start"]


class GlobalModel:
    """The exchanged state of the global model and its update rule.

    Args:
        spec: maps the model's exchanged tensors to the vector.
        vector: the initial global model (``spec.flatten(model)``).
        server_opt: the server optimizer on the trainable part (plain FedAvg by default).
        compressor: the round's shared rand-k coordinates, to scatter an aggregate back.
        adaptive_ranges: the protocol quantizes on per-tensor ranges that follow the updates
            (:mod:`fedshield.protocols.ranges`): this model keeps their exponents, moves them
            with each round's statistic and broadcasts them with the weights.
    """

    def __init__(
        self,
        *,
        spec: ParamSpec,
        vector: np.ndarray,
        server_opt: ServerOptimizer | None = None,
        compressor: UpdateCompressor,
        adaptive_ranges: bool = False,
    ) -> None:
        if not isinstance(spec, ParamSpec):
            raise TypeError(f"spec must be a ParamSpec, got {type(spec).__name__}")
        if server_opt is not None and not isinstance(server_opt, ServerOptimizer):
            raise TypeError(
                "server_opt must be a ServerOptimizer (fedshield.aggregation.build(name)), got "
                f"{type(server_opt).__name__}"
            )
        self.spec = spec
        self.vector = np.array(vector, dtype=np.float32)  # our own copy
        spec.sha256(self.vector)  # checks the length
        self.server_opt = server_opt or ServerOptimizer()
        self.compressor = compressor
        self.range_exponents: tuple[int, ...] | None = None
        if adaptive_ranges:
            trainable = [e.trainable for e in spec.entries]
            self.range_exponents = TensorRanges.initial_exponents(trainable)

    def broadcast(self, round: int) -> bytes:
        """The "here is the global model" message of ``round`` (and the range exponents)."""
        header = wire.Header(MODEL_BROADCAST, 0, round, wire.SERVER_ID)
        fields = [self.vector]
        if self.range_exponents is not None:
            fields.append(np.array(self.range_exponents, dtype="<i4"))
        return wire.serialize(header, fields)

    def round_ranges(self, round: int) -> TensorRanges | None:
        """The per-tensor ranges of ``round`` (``None`` without adaptive ranges)."""
        if self.range_exponents is None:
            return None
        return self.compressor.ranges(round, self.spec.sizes, self.range_exponents)

    def apply_aggregate(
        self, weighted_sum: np.ndarray, total_weight: float, round: int,
        range_counts: np.ndarray | None = None,
    ) -> None:  # fmt: skip
        """Move the model by a round's aggregate (what the server learned, or under ``he``
        what a site decrypted): the weighted mean, through the server optimizer; and the
        ranges by the round's summed statistic (``range_counts``)."""
        ranges = self.round_ranges(round)
        if ranges is not None and range_counts is not None:
            self.range_exponents = ranges.next(range_counts)
        mean = weighted_mean(weighted_sum, total_weight)
        delta = self.compressor.expand(self.compressor.shared_indices(round), mean)
        k = self.spec.n_trainable
        new = self.vector.copy()
        new[:k] = self.server_opt.step(self.vector[:k], delta[:k])
        new[k:] = self.vector[k:] + delta[k:]  # buffers (BN statistics): plain mean
        self.vector = self.spec.clamp_variances(new)

    def sha256(self) -> str:
        """SHA-256 of the global model's exchanged state dict (equal digests: equal bits)."""
        return self.spec.sha256(self.vector)


def he_round_start(round: int, last_aggregate_round: int) -> bytes:
    """The message that starts a deployed ``he`` round in place of the model broadcast (the
    sites hold the model, the server never learns it): the round in the header, and the last
    round whose aggregate the sites decrypted (a site that missed it must not train)."""
    header = wire.Header(MODEL_BROADCAST, 0, round, wire.SERVER_ID)
    return wire.serialize(header, [np.array([last_aggregate_round], dtype="<u4")])
