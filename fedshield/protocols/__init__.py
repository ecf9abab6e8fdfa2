"""Protection protocols as pairs of server/client session state machines (torch-free).

``plain`` (:mod:`.plain`), ``secagg`` (:mod:`.secagg`, SecAgg+) and ``he`` (:mod:`.he`, packed
BFV/CKKS), each package opening with its threat model; :mod:`.registry` names them and binds
their options; :mod:`.ids` holds the wire protocol ids.
"""

from fedshield.protocols.base import ClientSession, Revealed, ServerSession
from fedshield.protocols.plain import PlainClient, PlainServer
from fedshield.protocols.registry import PROTOCOLS, ProtocolSpec, get_protocol

__all__ = [
    "PROTOCOLS",
    "ClientSession",
    "PlainClient",
    "PlainServer",
    "ProtocolSpec",
    "Revealed",
    "ServerSession",
    "get_protocol",
]
