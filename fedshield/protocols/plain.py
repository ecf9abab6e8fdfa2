"""``plain``: no protection. Each client sends its encoded update; the server sees every one.

Threat model: none. The server (and anyone on the path without TLS) learns each site's update.
It is the baseline the protected protocols are measured against, and the protocol of choice
only when the server is fully trusted. Any number of dropouts is tolerated: the aggregate is over
whoever answered with a valid update.
"""

from __future__ import annotations

import numpy as np

from fedshield import wire
from fedshield.errors import NonFiniteValues, ProtocolAbort, WrongShape
from fedshield.protocols.base import ClientSession, Revealed, ServerSession

__all__ = ["PlainClient", "PlainServer"]

PROTOCOL_ID = 1
STAGES = ("input",)


class PlainServer(ServerSession):
    """Server side of ``plain``: checks each update and adds it to a running weighted sum.

    Example:
        >>> import numpy as np
        >>> server = PlainServer(round=0, clients=[0], dim=3)
        >>> client = PlainClient(client_id=0, round=0, update=np.ones(3, np.float32), weight=2.0)
        >>> request = server.broadcast("input")[0]
        >>> server.receive("input", 0, client.handle("input", request))
        >>> server.close_stage("input")
        >>> server.reveal().weighted_sum.tolist()
        [2.0, 2.0, 2.0]
    """

    protocol_id = PROTOCOL_ID
    stages = STAGES

    def __init__(self, *, round: int, clients, dim: int, keep_updates: bool = False) -> None:
        super().__init__(round=round, clients=clients, dim=dim)
        self._sum = np.zeros(dim, dtype=np.float64)
        self._total_weight = 0.0
        self._weights: dict[int, float] = {}
        self._updates: dict[int, np.ndarray] | None = {} if keep_updates else None

    def _broadcast(self, stage: str) -> dict[int, bytes]:
        request = self._server_message(stage, [np.array([self.dim], dtype=np.uint64)])
        return {cid: request for cid in sorted(self.alive)}

    def _max_message_bytes(self, stage: str) -> int:
        return 64 + 4 * self.dim + 64

    def _receive(self, stage: str, sender: int, message: wire.Message) -> None:
        message.require_fields(2)
        weight = float(message.array(0, dtype="<f8", shape=(1,))[0])
        update = message.array(1, dtype="<f4", shape=(self.dim,))
        if not np.isfinite(weight) or weight <= 0:
            raise WrongShape(f"client {sender} sent weight {weight}; it must be positive")
        if not np.isfinite(update).all():
            raise NonFiniteValues(f"client {sender} sent an update with NaN or infinity")
        # Only valid input reaches the sum, so a rejected client never corrupts it.
        self._sum += weight * update.astype(np.float64)
        self._total_weight += weight
        self._weights[sender] = weight
        if self._updates is not None:
            self._updates[sender] = update.copy()

    def _close_stage(self, stage: str) -> None:
        if not self._weights:
            raise ProtocolAbort(f"round {self.round}: no client delivered a valid update")

    def _reveal(self) -> Revealed:
        contributors = tuple(sorted(self._weights))
        return Revealed(
            contributors=contributors,
            weighted_sum=self._sum,
            total_weight=self._total_weight,
            dropped=tuple(c for c in self.clients if c not in self._weights),
            updates=self._updates,
        )


class PlainClient(ClientSession):
    """Client side of ``plain``: sends ``(weight, update)`` in the clear."""

    protocol_id = PROTOCOL_ID
    stages = STAGES

    def _handle(self, stage: str, message: wire.Message) -> bytes:
        message.require_fields(1)
        (dim,) = message.array(0, dtype="<u8", shape=(1,))
        if int(dim) != self.update.size:
            raise WrongShape(
                f"server expects {int(dim)} values, this client has {self.update.size}"
            )
        return self._client_message(stage, [np.array([self.weight], dtype=np.float64), self.update])
