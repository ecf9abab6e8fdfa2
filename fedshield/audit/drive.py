"""The audit's round driver: every stage of a round run in this process as the round runner
runs it, with every message passing a hook that can swap it for others on its way, and every
error a session raises recorded rather than raised (:class:`Driven`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from fedshield.errors import FedshieldError, ProtocolAbort
from fedshield.protocols.base import ClientSession, Revealed, ServerSession

__all__ = ["Delivery", "Driven", "Hook", "drive"]

# A hook sees each message on its way, (direction, stage, party, data), with direction "down"
# (server to client) or "up"; it returns the messages to deliver instead, or None.
Hook = Callable[[str, str, int, bytes], "list[bytes] | None"]


@dataclass(frozen=True)
class Delivery:
    """One message delivered: its direction (``down``: to a client; ``up``: to the server),
    stage and party, whether a hook put it there, and the error it raised (``None``: taken)."""

    direction: str
    stage: str
    party: int
    hooked: bool
    error: BaseException | None


@dataclass
class Driven:
    """What driving a round gave: the revealed aggregate (``None`` when it aborted), every
    delivery, and an error that broadcast, close_stage or reveal raised other than an abort."""

    revealed: Revealed | None = None
    aborted: str | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    failure: BaseException | None = None

    @property
    def crashes(self) -> list[BaseException]:
        """Every error raised that is not one of fedshield's typed errors."""
        errors = [d.error for d in self.deliveries if d.error is not None] + [self.failure]
        return [e for e in errors if e is not None and not isinstance(e, FedshieldError)]

    def hooked(self) -> list[Delivery]:
        """The deliveries a hook put in place of the honest message."""
        return [d for d in self.deliveries if d.hooked]


def drive(
    server: ServerSession,
    clients: Mapping[int, ClientSession],
    *,
    hook: Hook | None = None,
    absent: Mapping[str, set[int]] | None = None,
) -> Driven:
    """Run every stage of ``server``'s round against ``clients`` in this process, as the round
    runner does (a client that raises gives no answer; the server drops a sender whose message
    it rejects), but with every message passing ``hook`` first and every error recorded:
    nothing raised by a session escapes. ``absent``: clients that vanish at a stage."""
    out, absent = Driven(), absent or {}
    try:
        for stage in server.stages:
            for cid, message in sorted(server.broadcast(stage).items()):
                if cid in absent.get(stage, ()) or cid not in clients:
                    continue
                handle = clients[cid].handle
                answer = _deliver(out, hook, "down", stage, cid, message,
                                  lambda m, s=stage, h=handle: h(s, m))  # fmt: skip
                if answer is not None:
                    _deliver(out, hook, "up", stage, cid, answer,
                             lambda m, s=stage, c=cid: server.receive(s, c, m))  # fmt: skip
            server.close_stage(stage)
        out.revealed = server.reveal()
    except ProtocolAbort as exc:
        out.aborted = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # recorded: the audit reports it
        out.failure = exc
    return out


def _deliver(out: Driven, hook, direction: str, stage: str, party: int, data, call):
    """Deliver ``data`` (or what ``hook`` puts in its place); the first answer given."""
    data = bytes(data)
    replaced = hook(direction, stage, party, data) if hook is not None else None
    answer = None
    for message in [data] if replaced is None else replaced:
        try:
            value = call(bytes(message))
        except Exception as exc:  # recorded, never raised: the audit counts it
            out.deliveries.append(Delivery(direction, stage, party, replaced is not None, exc))
            if direction == "up" and isinstance(exc, ProtocolAbort):
                raise  # the server ended the round, as the round runner lets it
            continue
        out.deliveries.append(Delivery(direction, stage, party, replaced is not None, None))
        answer = value if answer is None else answer
    return answer
