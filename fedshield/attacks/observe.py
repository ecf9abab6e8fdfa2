"""What an honest-but-curious server sees in one round of the real engine.

:func:`observe_round` runs a round of a :class:`~fedshield.engine.federation.Federation`
(the sites' real training, the protocol's real sessions, every message as bytes) and keeps
what the server could read: under ``plain`` each site's input message (a float32 update in
the clear), under ``secagg`` only the revealed sum. The round is then applied as usual.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedshield import wire
from fedshield.attacks.inversion import ObservedUpdate
from fedshield.engine.federation import Federation
from fedshield.engine.transport import InProcessTransport, Reply
from fedshield.errors import ConfigError, ProtocolAbort

__all__ = ["observe_round"]


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


def observe_round(
    fed: Federation, *, image_shape: tuple[int, int, int], target: int | None = None,
    local_steps: int = 1,
) -> ObservedUpdate:  # fmt: skip
    """Run one round of ``fed`` and return the update the server saw.

    Args:
        fed: the federation (its protocol decides what the server sees).
        image_shape: ``(C, H, W)`` of the sites' images.
        target: under ``plain``, the site whose own update the server reads from its
            message; ``None``: the round's revealed aggregate (the weighted mean of the
            updates), all that ``secagg`` shows.
        local_steps: the optimizer steps each site takes (public in the run's config).

    Raises:
        ConfigError: ``target`` set under a protocol whose messages hide the update, or
            under a quantizing plain format.
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
    if target is not None:
        delta = _plain_update(fed, transport.received, target)
    elif outcome.revealed is None or outcome.revealed.weighted_sum is None:
        raise ProtocolAbort(f"the round revealed no aggregate ({outcome.aborted})")
    else:
        revealed = outcome.revealed
        delta = (revealed.weighted_sum / revealed.total_weight).astype(np.float32)
    return ObservedUpdate(
        model=fed.model, spec=fed.spec, start=start, delta=delta[: fed.spec.dim],
        image_shape=image_shape, local_steps=local_steps,
    )  # fmt: skip


def _plain_update(fed: Federation, received: dict, target: int) -> np.ndarray:
    """Site ``target``'s float32 update, read from its ``plain`` input message."""
    if fed.protocol.name != "plain" or fed.protocol.describe().get("quant_bits"):
        raise ConfigError(
            f"the server reads a site's own update only under float32 plain, not "
            f"{fed.protocol.name} ({fed.protocol.describe()})"
        )
    data = received.get(("input", target))
    if data is None:
        raise ProtocolAbort(f"site {target} sent no update this round")
    message = wire.parse(data)
    return message.array(1, dtype="<f4", shape=(fed.spec.dim,)).copy()
