"""The round runner: drives any protocol's sessions through its stages over a transport.

It knows nothing about a particular protocol. A client that gives no reply, or whose reply the
server rejects, is a dropout; the server session decides whether the round can still complete.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from fedshield.crypto.identity import Identity
from fedshield.engine.dropout import DropoutPolicy
from fedshield.engine.transport import InProcessTransport, Transport
from fedshield.errors import ConfigError, InvalidMessage, ProtocolAbort
from fedshield.protocols.base import Revealed, ServerSession
from fedshield.protocols.registry import ProtocolSpec
from fedshield.protocols.roster import Roster

__all__ = ["ProtocolOutcome", "StageStats", "enrol", "run_protocol", "setup_protocol"]


@dataclass
class StageStats:
    """Bytes and seconds of one stage, per client."""

    stage: str
    bytes_down: dict[int, int] = field(default_factory=dict)
    bytes_up: dict[int, int] = field(default_factory=dict)
    client_s: dict[int, float] = field(default_factory=dict)
    server_s: float = 0.0
    dropped: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Plain data for ``result.json``."""
        return {
            "stage": self.stage,
            "bytes_down": {str(k): v for k, v in self.bytes_down.items()},
            "bytes_up": {str(k): v for k, v in self.bytes_up.items()},
            "client_s": {str(k): round(v, 6) for k, v in self.client_s.items()},
            "server_s": round(self.server_s, 6),
            "dropped": self.dropped,
            "rejected": {str(k): v for k, v in self.rejected.items()},
        }


@dataclass
class ProtocolOutcome:
    """What a round produced: the revealed aggregate (``None`` if aborted) and per-stage stats."""

    revealed: Revealed | None
    stages: list[StageStats]
    aborted: str | None = None


def run_protocol(
    server: ServerSession,
    transport: Transport,
    *,
    dropout: DropoutPolicy | None = None,
) -> ProtocolOutcome:
    """Run every stage of ``server``'s protocol through ``transport``.

    Returns the outcome (a stage that addressed nobody is left out of its stages); a
    :class:`ProtocolAbort` ends the round with ``revealed=None``.
    """
    stages: list[StageStats] = []
    try:
        for stage in server.stages:
            stats = StageStats(stage)
            stages.append(stats)
            start = time.perf_counter()
            outgoing = server.broadcast(stage)
            stats.server_s += time.perf_counter() - start
            delivered = {}
            for cid, message in outgoing.items():
                if dropout is not None and dropout.drops(server.round, stage, cid):
                    stats.dropped.append(cid)
                else:
                    delivered[cid] = message
                    stats.bytes_down[cid] = len(message)
            for cid, reply in sorted(transport.exchange(stage, delivered).items()):
                stats.client_s[cid] = reply.seconds
                if reply.data is None:
                    stats.dropped.append(cid)
                    if reply.error:
                        stats.rejected[cid] = f"client: {reply.error}"
                    continue
                stats.bytes_up[cid] = len(reply.data)
                start = time.perf_counter()
                try:
                    server.receive(stage, cid, reply.data)
                except InvalidMessage as exc:
                    stats.rejected[cid] = f"{type(exc).__name__}: {exc}"
                stats.server_s += time.perf_counter() - start
            start = time.perf_counter()
            server.close_stage(stage)
            stats.server_s += time.perf_counter() - start
            if not outgoing and len(stages) > 1:  # a stage for nobody (secagg's expel, often)
                stages.pop()
                stages[-1].server_s += stats.server_s
        start = time.perf_counter()
        revealed = server.reveal()
        stages[-1].server_s += time.perf_counter() - start
        return ProtocolOutcome(revealed, stages)
    except ProtocolAbort as exc:
        return ProtocolOutcome(None, stages, aborted=str(exc))


def enrol(spec: ProtocolSpec, sites: list[int]) -> tuple[Roster, dict[int, Identity]]:
    """A fresh identity per site and the roster for ``spec``: its smallest round
    (:meth:`~fedshield.protocols.registry.ProtocolSpec.min_sites`) and its public options
    pinned (what a deployment does once; the in-process engine at every start)."""
    return Roster.enrol(
        sites, min_sites=spec.min_sites(len(sites)),
        parameters=spec.pinned_parameters(),
    )  # fmt: skip


def setup_protocol(
    spec: ProtocolSpec,
    *,
    clients: list[int],
    dim: int,
    identities: Mapping[int, Identity],
    tensors: int = 0,
) -> ProtocolSpec:
    """Run ``spec``'s one-time setup in this process (``he``: the key-holder site makes the
    key and seals it to the others, each signing with its identity in ``identities``; the
    server only relays). Returns the protocol ready for its first round; a protocol without
    setup comes back as it is. ``tensors``: how many tensors the exchanged vector holds
    (adaptive ranges)."""
    setup = spec.key_setup(clients=clients, dim=dim, tensors=tensors)
    if setup is None:
        return spec
    missing = sorted(set(clients) - set(identities))
    if missing:
        raise ConfigError(f"{spec.name}: no identity key for sites {missing}")
    sites = {c: setup.client(c, identities[c]) for c in clients}
    outcome = run_protocol(setup.server(), InProcessTransport(sites))
    if outcome.revealed is None or len(outcome.revealed.contributors) != len(clients):
        raise ConfigError(f"{spec.name}: key distribution failed ({outcome.aborted})")
    return setup.bind({c: site.keyring for c, site in sites.items()})
