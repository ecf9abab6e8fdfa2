"""The protocols the engine can run, by name. Each is a server and a client session class."""

from __future__ import annotations

from dataclasses import dataclass

from fedshield.errors import ConfigError
from fedshield.protocols.base import ClientSession, ServerSession
from fedshield.protocols.plain import PlainClient, PlainServer

__all__ = ["PROTOCOLS", "ProtocolPair", "get_protocol"]


@dataclass(frozen=True)
class ProtocolPair:
    """A protocol's name and its two session classes."""

    name: str
    server: type[ServerSession]
    client: type[ClientSession]


PROTOCOLS = {"plain": ProtocolPair("plain", PlainServer, PlainClient)}


def get_protocol(name: str) -> ProtocolPair:
    """The protocol called ``name``."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ConfigError(f"unknown protection {name!r}; available: {sorted(PROTOCOLS)}") from None
