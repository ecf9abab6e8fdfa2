"""What every protection protocol provides: a server session and a client session per round.

A protocol is a pair of explicit state machines that exchange wire messages (bytes) in numbered
stages. The round runner (or any foreign framework) drives them:

1. for each stage, in order: ``server.broadcast(stage)`` gives the message for each live client;
   each client answers with ``client.handle(stage, message)``; the server takes each answer with
   ``server.receive(stage, client_id, answer)``; then ``server.close_stage(stage)``;
2. ``server.reveal()`` gives what the protocol lets the server learn.

A client that does not answer, or whose answer raises :class:`~fedshield.errors.InvalidMessage`,
is dropped for the rest of the round; the session remembers it.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from fedshield import wire
from fedshield.errors import IllegalTransition, ReplayedMessage, UnknownSender

__all__ = ["ClientSession", "Revealed", "ServerSession"]


@dataclass(frozen=True)
class Revealed:
    """What the server learns at the end of a round.

    Attributes:
        contributors: clients whose input is in the aggregate.
        weighted_sum: ``sum_i w_i * x_i`` over contributors (float64); ``None`` when the
            server learns no aggregate (``he``: the clients decrypt it, see
            :attr:`ClientSession.aggregate`).
        total_weight: ``sum_i w_i`` over contributors (``None`` likewise).
        dropped: clients that were asked to take part but are not in the aggregate.
        updates: each contributor's update, only for protocols that reveal them (``plain``) and
            when asked to keep them.
    """

    contributors: tuple[int, ...]
    weighted_sum: np.ndarray | None
    total_weight: float | None
    dropped: tuple[int, ...] = ()
    updates: Mapping[int, np.ndarray] | None = field(default=None, repr=False)


class ServerSession(ABC):
    """Server side of one round of a protocol. Single use: one session per round."""

    protocol_id: int
    stages: tuple[str, ...]
    large_payloads = False  # True: bytes fields arrive as views of the message, not copies

    def __init__(self, *, round: int, clients: Iterable[int], dim: int) -> None:
        clients = tuple(sorted(set(int(c) for c in clients)))
        if not clients:
            raise ValueError("a round needs at least one client")
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if not 0 <= round < 2**32:
            raise ValueError(f"round must fit in 32 bits, got {round}")
        self.round = round
        self.clients = clients
        self.dim = dim
        self.alive: set[int] = set(clients)
        self._stage_index = -1
        self._answered: set[int] = set()
        self._revealed = False

    # --- driving -------------------------------------------------------------------------------
    def broadcast(self, stage: str) -> dict[int, bytes]:
        """Open ``stage`` and return the message for each live client."""
        expected = self._stage_index + 1
        if expected >= len(self.stages) or stage != self.stages[expected]:
            raise IllegalTransition(f"cannot open stage {stage!r} after {self._current()!r}")
        self._stage_index = expected
        self._answered = set()
        messages = self._broadcast(stage)
        self._addressed = set(messages)
        return messages

    def receive(self, stage: str, sender: int, data: bytes) -> None:
        """Take ``sender``'s answer for ``stage``; a bad answer raises and drops the sender."""
        if stage != self._current():
            raise IllegalTransition(f"stage {stage!r} is not open (open: {self._current()!r})")
        if sender not in self.clients:
            raise UnknownSender(f"client {sender} is not a participant of round {self.round}")
        if sender not in self.alive:
            raise UnknownSender(f"client {sender} already dropped out of round {self.round}")
        if sender in self._answered:
            raise ReplayedMessage(f"client {sender} already answered stage {stage!r}")
        try:
            message = wire.parse(
                data, max_bytes=self._max_message_bytes(stage), views=self.large_payloads
            )
            message.expect(
                protocol=self.protocol_id,
                stage=self._stage_code(stage),
                round=self.round,
                sender=sender,
            )
            self._receive(stage, sender, message)
        except Exception:
            self.alive.discard(sender)
            raise
        self._answered.add(sender)

    def close_stage(self, stage: str) -> None:
        """End ``stage``: clients asked in it that did not answer are dropped (a stage may
        address only some clients). May raise ProtocolAbort."""
        if stage != self._current():
            raise IllegalTransition(f"stage {stage!r} is not open (open: {self._current()!r})")
        self.alive -= self._addressed - self._answered
        self._close_stage(stage)

    def reveal(self) -> Revealed:
        """After the last stage: what the server learns."""
        if self._stage_index != len(self.stages) - 1 or self._revealed:
            raise IllegalTransition("reveal() comes once, after the last stage is closed")
        self._revealed = True
        return self._reveal()

    def describe(self) -> dict:
        """Public parameters of this round worth recording (ring bits, threshold...)."""
        return {}

    @property
    def dropped(self) -> tuple[int, ...]:
        """Clients dropped so far in this round."""
        return tuple(c for c in self.clients if c not in self.alive)

    # --- helpers for subclasses ----------------------------------------------------------------
    def _current(self) -> str | None:
        return self.stages[self._stage_index] if self._stage_index >= 0 else None

    def _stage_code(self, stage: str) -> int:
        return self.stages.index(stage) + 1

    def _server_message(self, stage: str, fields: tuple | list = ()) -> bytes:
        header = wire.Header(self.protocol_id, self._stage_code(stage), self.round, wire.SERVER_ID)
        return wire.serialize(header, fields)

    # --- protocol specifics ------------------------------------------------------------------
    @abstractmethod
    def _broadcast(self, stage: str) -> dict[int, bytes]: ...

    @abstractmethod
    def _receive(self, stage: str, sender: int, message: wire.Message) -> None: ...

    def _close_stage(self, stage: str) -> None:  # noqa: B027 - optional hook
        """Hook run at the end of each stage."""

    @abstractmethod
    def _reveal(self) -> Revealed: ...

    @abstractmethod
    def _max_message_bytes(self, stage: str) -> int: ...


class ClientSession(ABC):
    """Client side of one round of a protocol: answers each stage's server message."""

    protocol_id: int
    stages: tuple[str, ...]
    large_payloads = False  # True: bytes fields arrive as views of the message, not copies
    skippable: frozenset[str] = frozenset()  # stages the server may address to others only

    def __init__(
        self,
        *,
        client_id: int,
        round: int,
        update: np.ndarray,
        weight: float,
        quant_seed: int | None = None,
    ) -> None:
        update = np.asarray(update)
        if update.ndim != 1 or update.dtype != np.float32:
            raise TypeError("update must be a flat float32 vector (use ParamSpec.flatten)")
        if not np.isfinite(weight) or weight <= 0:
            raise ValueError(f"weight must be positive and finite, got {weight}")
        self.client_id = int(client_id)
        self.round = round
        self.update = update
        self.weight = float(weight)
        # The stochastic-rounding stream: reproducible when the engine passes a seed.
        self.quant_seed = secrets.randbits(64) if quant_seed is None else int(quant_seed)
        # What the server will decode of this client's input (dequantized values), once sent:
        # what error feedback compares the update with.
        self.sent: np.ndarray | None = None
        # (weighted_sum, total_weight) for protocols where clients, not the server, learn the
        # aggregate (he).
        self.aggregate: tuple[np.ndarray, float] | None = None
        self._stage_index = -1

    def handle(self, stage: str, data: bytes) -> bytes:
        """Answer the server's message for ``stage``. Stages must come in order; only those in
        :attr:`skippable` may pass this client by."""
        expected = self._stage_index + 1
        while (
            expected < len(self.stages)
            and self.stages[expected] != stage
            and self.stages[expected] in self.skippable
        ):
            expected += 1
        if expected >= len(self.stages) or stage != self.stages[expected]:
            raise IllegalTransition(f"client {self.client_id} cannot handle stage {stage!r} now")
        self._stage_index = expected
        message = wire.parse(data, views=self.large_payloads)
        message.expect(
            protocol=self.protocol_id, stage=expected + 1, round=self.round, sender=wire.SERVER_ID
        )
        return self._handle(stage, message)

    def _client_message(self, stage: str, fields: tuple | list) -> bytes:
        code = self.stages.index(stage) + 1
        return wire.serialize(
            wire.Header(self.protocol_id, code, self.round, self.client_id), fields
        )

    @abstractmethod
    def _handle(self, stage: str, message: wire.Message) -> bytes: ...
