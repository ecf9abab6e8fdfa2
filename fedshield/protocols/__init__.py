"""Protection protocols as pairs of server/client session state machines (torch-free).

``plain`` (:mod:`.plain`), ``secagg`` (:mod:`.secagg`, SecAgg+) and ``he`` (:mod:`.he`, packed
BFV/CKKS), each package opening with its threat model; :mod:`.registry` names them and binds
their options; :mod:`.ids` holds the wire protocol ids. Names load on first use (PEP 562), so
``import fedshield.protocols.plain`` does not pay for TenSEAL.
"""

from importlib import import_module

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

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
