"""Protection protocols as pairs of server/client session state machines (torch-free).

``plain`` (:mod:`.plain`), ``secagg`` (:mod:`.secagg`, SecAgg+) and ``he`` (:mod:`.he`, packed
BFV/CKKS), each package opening with its threat model; :mod:`.registry` names them and binds
their options; :mod:`.ids` holds the wire protocol ids. Names load on first use (PEP 562), so
``import fedshield.protocols.plain`` does not pay for TenSEAL.
"""

from fedshield._lazy import lazy_names

_WHERE = {
    "ClientSession": "base",
    "Revealed": "base",
    "ServerSession": "base",
    "PlainClient": "plain",
    "PlainServer": "plain",
    "PROTOCOLS": "registry",
    "ProtocolSpec": "registry",
    "get_protocol": "registry",
}

__all__, __getattr__, __dir__ = lazy_names(__name__, _WHERE)
