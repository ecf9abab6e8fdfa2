"""What an honest-but-curious server sees in one round of the real engine.

:func:`observe_round` runs a round of a :class:`~fedshield.engine.federation.Federation`
(the sites' real training, the protocol's real sessions, every message as bytes) and keeps
what the server could read: under ``plain`` each site's input message (a float32 update in
the clear), under ``secagg`` only the revealed sum. The round is then applied as usual.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedshield import wire
from fedshield.attacks.inversion import ObservedUpdate
from fedshield.engine.federation import Federation
from fedshield.engine.transport import InProcessTransport, Reply
from fedshield.errors import ProtocolAbort

__all__ = ["ServerView", "observe_round"]


class _RecordingTransport(InProcessTransport):
    """The in-process transport, keeping a copy of every reply the server receives."""

    def __init__(self, sessions) -> None:
        super().__init__(sessions)
        self.received: dict[tuple[str, int], bytes] = {}

    def exchange(self, stage: str, messages: Mapping[int, bytes]) -> dict[int, Reply]:
        replies = super().exchange(stage, messages)
        for cid, reply in replies.items():
            if reply.data is not None:
                self.received[(stage, cid)] = reply.data
        return replies


@dataclass(frozen=True)
class ServerView:
    """What the server could read in one round: each site's own update where the protocol
    sends it in the clear (float32 ``plain``), and the revealed aggregate (the weighted mean
    of the updates), all that ``secagg`` shows."""

    per_site: dict[int, ObservedUpdate]
    aggregate: ObservedUpdate | None


def observe_round(
    fed: Federation, *, image_shape: tuple[int, int, int], local_steps: int = 1
) -> ServerView:
    """Run one round of ``fed`` (real training, real sessions) and keep what its server saw.

    Args:
        fed: the federation (its protocol decides what the server sees).
        image_shape: ``(C, H, W)`` of the sites' images.
        local_steps: the optimizer steps each site takes (public in the run's config).

    Raises:
        ProtocolAbort: the round revealed nothing.
    """
    start = fed.global_vector.copy()
    broadcast = fed.server.broadcast()
    sessions = {r.site_id: r.train(broadcast, fed.round) for r in fed.runtimes}
    transport = _RecordingTransport(sessions)
    outcome, _ = fed.server.drive(transport, list(sessions))
    for runtime in fed.runtimes:
        runtime.conclude(sessions[runtime.site_id])
    fed.server.apply(outcome, sessions)
    fed.server.round += 1  # no evaluation record: the attack needs none
    revealed = outcome.revealed
    if revealed is None or revealed.weighted_sum is None:
        raise ProtocolAbort(f"the round revealed no aggregate ({outcome.aborted})")

    def seen(delta: np.ndarray) -> ObservedUpdate:
        return ObservedUpdate(
            model=fed.model, spec=fed.spec, start=start,
            delta=np.asarray(delta[: fed.spec.dim], np.float32), image_shape=image_shape,
            local_steps=local_steps,
        )  # fmt: skip

    per_site = {}
    if fed.protocol.name == "plain" and not fed.protocol.describe().get("quant_bits"):
        for (stage, cid), data in transport.received.items():
            if stage == "input":  # (weight, float32 update) in the clear
                per_site[cid] = seen(wire.parse(data).array(1, dtype="<f4", shape=(fed.spec.dim,)))
    return ServerView(per_site, seen(revealed.weighted_sum / revealed.total_weight))
