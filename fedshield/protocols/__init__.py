"""Protection protocols as pairs of server/client session state machines (torch-free)."""

from fedshield.protocols.base import ClientSession, Revealed, ServerSession
from fedshield.protocols.plain import PlainClient, PlainServer

__all__ = ["ClientSession", "PlainClient", "PlainServer", "Revealed", "ServerSession"]
