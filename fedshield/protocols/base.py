"""What every protection protocol provides: a server session and a client session per round.

A protocol is a pair of explicit state machines that exchange wire messages (bytes) in numbered
stages. The round runner (or any foreign framework) drives them:

1. for each stage, in order: ``server.broadcast(stage)`` gives the message for each live client;
   each client answers with ``client.handle(stage, message)``; the server takes each answer with
   ``server.receive(stage, client_id, answer)``; then ``server.close_stage(stage)``;
2. ``server.reveal()`` gives what the protocol lets the server learn.

Driving a session out of that order raises :class:`~fedshield.errors.IllegalTransition`
(:class:`~fedshield.errors.StageNotClosed` when a stage was not closed first). A client that
does not answer, or whose answer raises :class:`~fedshield.errors.InvalidMessage`, is dropped for
the rest of the round; the session remembers it.

Stage handlers. A session's stages are a :class:`~fedshield.protocols.ids.StrEnum`; each stage
has one method per step, marked with :func:`broadcasts`, :func:`receives` and (optionally)
:func:`closes` on a server, :func:`handles` on a client. The marks are collected into the
class's ``_handlers`` table when the class is created, and a class whose ``stages`` lack a
handler (or that marks a stage it does not have) fails right there, at import.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import numpy as np

from fedshield import wire
from fedshield._validate import check_client_ids, check_int, check_real
from fedshield.compress.accumulate import all_finite
from fedshield.errors import (
    IllegalTransition,
    NonFiniteValues,
    ProtocolAbort,
    ReplayedMessage,
    StageNotClosed,
    UnknownSender,
)

__all__ = [
    "ClientSession",
    "Revealed",
    "ServerSession",
    "broadcasts",
    "closes",
    "handles",
    "receives",
]

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "_fedshield_stages"
_ROUND_TOP = 2**32 - 1  # the wire's round field is u32
_CLIENT_TOP = 2**32 - 2  # 0xFFFFFFFF is the server's id on the wire


def _marker(kind: str) -> Callable[..., Callable[[F], F]]:
    def mark_stages(*stages: str) -> Callable[[F], F]:
        def mark(method: F) -> F:
            marks = getattr(method, _MARK, ())
            setattr(method, _MARK, (*marks, *((kind, str(s)) for s in stages)))
            return method

        return mark

    mark_stages.__name__ = {"broadcast": "broadcasts", "close": "closes"}.get(kind, kind + "s")
    mark_stages.__doc__ = f"Mark a method as the ``{kind}`` step of the given stages."
    return mark_stages


broadcasts = _marker("broadcast")  # server: (self, stage) -> {client: message}
receives = _marker("receive")  # server: (self, stage, sender, message) -> None
closes = _marker("close")  # server, optional: (self, stage) -> None; may raise ProtocolAbort
handles = _marker("handle")  # client: (self, stage, message) -> answer bytes


class _StageMachine(ABC):
    """Collects each concrete subclass's marked handlers into ``_handlers`` and checks them."""

    stages: ClassVar[tuple[str, ...]]
    _required_kinds: ClassVar[tuple[str, ...]] = ()
    _optional_kinds: ClassVar[tuple[str, ...]] = ()
    _handlers: ClassVar[Mapping[tuple[str, str], str]] = MappingProxyType({})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table: dict[tuple[str, str], str] = {}
        for klass in reversed(cls.__mro__):
            for name, member in vars(klass).items():
                for key in getattr(member, _MARK, ()):
                    table[key] = name
        cls._handlers = MappingProxyType(table)
        stages = getattr(cls, "stages", None)
        if stages is not None:  # a concrete session, not an intermediate base
            _check_handlers(cls, tuple(str(s) for s in stages), table)

    def _handler(self, kind: str, stage: str) -> Callable[..., Any] | None:
        name = self._handlers.get((kind, str(stage)))
        return None if name is None else getattr(self, name)


def _check_handlers(cls: type[_StageMachine], stages: tuple[str, ...], table) -> None:
    if len(set(stages)) != len(stages):
        raise TypeError(f"{cls.__name__}.stages repeats a stage: {stages}")
    kinds = cls._required_kinds + cls._optional_kinds
    missing = [f"{k} '{s}'" for k in cls._required_kinds for s in stages if (k, s) not in table]
    unknown = [f"{k} '{s}'" for k, s in table if k not in kinds or s not in stages]
    if missing or unknown:
        raise TypeError(
            f"{cls.__name__}: stage handlers missing for {missing or 'none'}; "
            f"handlers for unknown kinds or stages: {unknown or 'none'}"
        )


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
        range_counts: under adaptive ranges, the summed range statistic: per tensor and
            octave, how many contributors' largest value fell there
            (:mod:`fedshield.protocols.ranges`); ``None`` otherwise, or under ``he``.
    """

    contributors: tuple[int, ...]
    weighted_sum: np.ndarray | None
    total_weight: float | None
    dropped: tuple[int, ...] = ()
    range_counts: np.ndarray | None = None


class ServerSession(_StageMachine):
    """Server side of one round of a protocol. Single use: one session per round.

    Subclasses set ``protocol_id`` and ``stages`` and mark one :func:`broadcasts` and one
    :func:`receives` method per stage (a :func:`closes` method where a stage needs one), and
    implement ``_reveal`` and ``_max_message_bytes``.
    """

    protocol_id: int
    large_payloads = False  # True: bytes fields arrive as views of the message, not copies
    _required_kinds = ("broadcast", "receive")
    _optional_kinds = ("close",)

    def __init__(self, *, round: int, clients: Iterable[int], dim: int) -> None:
        self.round = check_int("round", round, low=0, high=_ROUND_TOP)
        self.clients = check_client_ids("clients", clients)
        self.dim = check_int("dim", dim, low=1)
        self.alive: set[int] = set(self.clients)
        self._stage_index = -1
        self._closed = False  # whether the stage at _stage_index is closed
        self._aborted = False
        self._answered: set[int] = set()
        self._addressed: set[int] = set()
        self._revealed = False

    # --- driving -------------------------------------------------------------------------------
    def broadcast(self, stage: str) -> dict[int, bytes]:
        """Open ``stage`` and return the message for each live client.

        Raises:
            StageNotClosed: the previous stage is still open (call :meth:`close_stage`).
            IllegalTransition: ``stage`` is not the next one, or the round is over.
        """
        self._check_live()
        expected = self._stage_index + 1
        if expected >= len(self.stages) or stage != self.stages[expected]:
            raise IllegalTransition(f"cannot open stage '{stage}' now ({self._where()})")
        if self._stage_index >= 0 and not self._closed:
            raise StageNotClosed(
                f"cannot open stage '{stage}': close stage '{self._current()}' first"
            )
        self._stage_index, self._closed = expected, False
        self._answered = set()
        messages = self._run("broadcast", stage)
        self._addressed = set(messages)
        return messages

    def receive(self, stage: str, sender: int, data: bytes) -> None:
        """Take ``sender``'s answer for ``stage``; a bad answer raises and drops the sender."""
        self._check_open(stage)
        if sender not in self.clients:
            raise UnknownSender(f"client {sender} is not a participant of round {self.round}")
        if sender not in self.alive:
            raise UnknownSender(f"client {sender} already dropped out of round {self.round}")
        if sender in self._answered:
            raise ReplayedMessage(f"client {sender} already answered stage '{stage}'")
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
            self._run("receive", stage, sender, message)
        except Exception:
            self.alive.discard(sender)
            raise
        self._answered.add(sender)

    def close_stage(self, stage: str) -> None:
        """End ``stage``: clients asked in it that did not answer are dropped (a stage may
        address only some clients). May raise ProtocolAbort."""
        self._check_open(stage)
        self._closed = True
        self.alive -= self._addressed - self._answered
        if self._handler("close", stage) is not None:
            self._run("close", stage)

    def reveal(self) -> Revealed:
        """After the last stage is closed, once: what the server learns."""
        self._check_live()
        if self._stage_index != len(self.stages) - 1:
            raise IllegalTransition(f"reveal() comes after the last stage ({self._where()})")
        if not self._closed:
            raise StageNotClosed(f"reveal() comes after close_stage('{self._current()}')")
        self._revealed = True
        return self._reveal()

    def describe(self) -> dict:
        """Public parameters of this round worth recording (ring bits, threshold...)."""
        return {}

    @property
    def dropped(self) -> tuple[int, ...]:
        """Clients dropped so far in this round."""
        return tuple(c for c in self.clients if c not in self.alive)

    # --- state checks --------------------------------------------------------------------------
    def _check_live(self) -> None:
        if self._aborted or self._revealed:
            raise IllegalTransition(f"round {self.round} is over ({self._where()})")

    def _check_open(self, stage: str) -> None:
        self._check_live()
        if self._stage_index < 0 or stage != self._current() or self._closed:
            raise IllegalTransition(f"stage '{stage}' is not open ({self._where()})")

    def _where(self) -> str:
        if self._aborted:
            return "the round aborted"
        if self._revealed:
            return "the round was revealed"
        if self._stage_index < 0:
            return "no stage opened yet"
        return f"stage '{self._current()}' is {'closed' if self._closed else 'open'}"

    def _run(self, kind: str, stage: str, *args: Any) -> Any:
        """Call ``stage``'s ``kind`` handler; a ProtocolAbort ends the session."""
        try:
            return self._handler(kind, stage)(stage, *args)
        except ProtocolAbort:
            self._aborted = True
            raise

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
    def _reveal(self) -> Revealed: ...

    @abstractmethod
    def _max_message_bytes(self, stage: str) -> int: ...


class ClientSession(_StageMachine):
    """Client side of one round of a protocol: answers each stage's server message.

    Subclasses set ``protocol_id`` and ``stages`` and mark one :func:`handles` method per stage.
    """

    protocol_id: int
    large_payloads = False  # True: bytes fields arrive as views of the message, not copies
    skippable: frozenset[str] = frozenset()  # stages the server may address to others only
    _required_kinds = ("handle",)

    def __init__(
        self,
        *,
        client_id: int,
        round: int,
        update: np.ndarray,
        weight: float,
        quant_seed: int | None = None,
    ) -> None:
        self.client_id = check_int("client_id", client_id, low=0, high=_CLIENT_TOP)
        self.round = check_int("round", round, low=0, high=_ROUND_TOP)
        self.update = _check_update(update)
        self.weight = check_real("weight", weight)
        seed = check_int("quant_seed", quant_seed, low=0, high=2**64 - 1, optional=True)
        # The stochastic-rounding stream: reproducible when the engine passes a seed.
        self.quant_seed = secrets.randbits(64) if seed is None else seed
        self._sent, self._sent_later = None, None  # see :attr:`sent`
        # (weighted_sum, total_weight) for protocols where clients, not the server, learn the
        # aggregate (he).
        self.aggregate: tuple[np.ndarray, float] | None = None
        # Under adaptive ranges, the summed range statistic where clients learn it (he).
        self.range_counts: np.ndarray | None = None
        self._stage_index = -1
        self._failed: str | None = None  # the error that ended this session, if any

    @property
    def sent(self) -> np.ndarray | None:
        """What the server will decode of this client's input once sent (``None`` before),
        for error feedback; a session may work it out when asked, off its critical path."""
        if self._sent_later is not None:
            self._sent, self._sent_later = self._sent_later(), None
        return self._sent

    @sent.setter
    def sent(self, value: np.ndarray | None) -> None:
        self._sent, self._sent_later = value, None

    def _send_later(self, compute: Callable[[], np.ndarray]) -> None:
        """Set :attr:`sent` to ``compute()``, called on first access."""
        self._sent, self._sent_later = None, compute

    def handle(self, stage: str, data: bytes) -> bytes:
        """Answer the server's message for ``stage``. Stages must come in order; only those in
        :attr:`skippable` may pass this client by. A stage whose message or handling fails
        ends the session: every later stage is refused (a client that refused to unmask
        must not answer what comes after, say).

        Raises:
            IllegalTransition: ``stage`` is not one this client may handle now, or an earlier
                stage failed.
        """
        if self._failed:
            raise IllegalTransition(
                f"client {self.client_id} refuses stage '{stage}': its session ended with "
                f"{self._failed}"
            )
        expected = self._stage_index + 1
        while (
            expected < len(self.stages)
            and self.stages[expected] != stage
            and self.stages[expected] in self.skippable
        ):
            expected += 1
        if expected >= len(self.stages) or stage != self.stages[expected]:
            done = self.stages[self._stage_index] if self._stage_index >= 0 else None
            raise IllegalTransition(
                f"client {self.client_id} cannot handle stage '{stage}' now "
                f"(last handled: {'none' if done is None else repr(str(done))})"
            )
        self._stage_index = expected
        try:
            message = wire.parse(data, views=self.large_payloads)
            message.expect(
                protocol=self.protocol_id, stage=expected + 1, round=self.round,
                sender=wire.SERVER_ID,
            )  # fmt: skip
            return self._handler("handle", stage)(stage, message)
        except Exception as exc:  # the stage is spent: no later stage may build on it
            self._failed = f"{type(exc).__name__} at stage '{stage}'"
            raise

    def _client_message(self, stage: str, fields: tuple | list) -> bytes:
        code = self.stages.index(stage) + 1
        return wire.serialize(
            wire.Header(self.protocol_id, code, self.round, self.client_id), fields
        )


def _check_update(update: object) -> np.ndarray:
    if not isinstance(update, np.ndarray) or update.dtype != np.float32:
        what = type(update).__name__
        if isinstance(update, np.ndarray):
            what = f"an array of {update.dtype}"
        raise TypeError(
            f"update must be a flat float32 numpy array (use ParamSpec.flatten), got {what}"
        )
    if update.ndim != 1 or update.size == 0:
        raise ValueError(f"update must be a non-empty 1-D vector, got shape {update.shape}")
    if not all_finite(update):  # quantized, NaN would land on a level and skew the sum
        raise NonFiniteValues("the update holds NaN or infinity: it is not sent")
    return update
