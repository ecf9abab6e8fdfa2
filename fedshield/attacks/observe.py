"""What an honest-but-curious server sees in one round of the real engine.

:func:`observe_round` runs a round of a :class:`~fedshield.engine.federation.Federation`
(the sites' real training, the protocol's real sessions, every message as bytes) and keeps
what the server could read: under ``plain`` each site's input message (a float32 update in
the clear), under ``secagg`` only the revealed sum, under threshold ``he`` the ciphertexts
and the sum it decrypts from the sites' partial decryptions (:mod:`.he_view`). The round is
then applied as usual.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedshield import wire
from fedshield.attacks.he_view import server_decrypted_sum
from fedshield.attacks.inversion import ObservedUpdate
from fedshield.engine.federation import Federation
from fedshield.engine.server_round import revealed_aggregate
from fedshield.engine.transport import InProcessTransport, Reply
from fedshield.errors import ProtocolAbort
from fedshield.protocols.he.threshold import ThresholdServer

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
    ranges = fed.server.model.round_ranges(fed.round)  # broadcast: the server knows them
    outcome, server = fed.server.drive(transport, list(sessions))
    for runtime in fed.runtimes:
        runtime.conclude(sessions[runtime.site_id])
    fed.server.apply(outcome, sessions)
    fed.server.round += 1  # no evaluation record: the attack needs none
    mean = _server_mean(outcome, server, ranges, sessions)

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
    return ServerView(per_site, seen(mean))


def _server_mean(outcome, server, ranges, sessions) -> np.ndarray:
    """The weighted mean of the updates as the server learns it: revealed (``plain``,
    ``secagg``) or decrypted from what it holds (threshold ``he``)."""
    revealed = outcome.revealed
    if revealed is None:
        raise ProtocolAbort(f"the round revealed no aggregate ({outcome.aborted})")
    if revealed.weighted_sum is not None:
        return revealed.weighted_sum / revealed.total_weight
    if isinstance(server, ThresholdServer):
        weighted_sum, total = server_decrypted_sum(server, ranges)
        held = revealed_aggregate(outcome, sessions)  # what the sites decrypted
        if held is None or not np.array_equal(held[0], weighted_sum) or held[1] != total:
            raise ProtocolAbort("the server's decryption of the sum differs from the sites'")
        return weighted_sum / total
    raise ProtocolAbort(f"the server of {type(server).__name__} learns no aggregate to attack")
