"""Transports carry one protocol stage's messages to the clients and bring back the answers."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

from fedshield.errors import FedshieldError
from fedshield.protocols.base import ClientSession

__all__ = ["InProcessTransport", "Reply", "Transport"]


@dataclass(frozen=True)
class Reply:
    """A client's answer (``None`` when it gave none), its compute time and any error."""

    data: bytes | None
    seconds: float = 0.0
    error: str | None = None


class Transport(ABC):
    """Sends each client its message for a stage and returns the replies."""

    @abstractmethod
    def exchange(self, stage: str, messages: Mapping[int, bytes]) -> dict[int, Reply]:
        """Deliver ``messages`` (client id → bytes) and collect one reply per addressed client."""


class InProcessTransport(Transport):
    """Runs the client sessions in this process, still passing only serialised bytes.

    A client whose session raises (for example on a malformed server message) gives no reply,
    which the round runner treats as a dropout.
    """

    def __init__(self, sessions: Mapping[int, ClientSession]) -> None:
        self.sessions = dict(sessions)

    def exchange(self, stage: str, messages: Mapping[int, bytes]) -> dict[int, Reply]:
        replies = {}
        for cid, message in messages.items():
            session = self.sessions.get(cid)
            if session is None:
                replies[cid] = Reply(None, error=f"no client {cid} in this process")
                continue
            start = time.perf_counter()
            try:
                data = session.handle(stage, bytes(message))
                replies[cid] = Reply(bytes(data), time.perf_counter() - start)
            except FedshieldError as exc:
                replies[cid] = Reply(
                    None, time.perf_counter() - start, f"{type(exc).__name__}: {exc}"
                )
        return replies
