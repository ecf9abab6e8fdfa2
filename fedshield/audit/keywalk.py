"""Which secret keys an object can reach: a walk over everything it holds.

The walk follows instance attributes (``__dict__`` and ``__slots__``), container items, bound
methods, closures, ``functools.partial`` arguments, weak references and finalizers: every
path by which Python code holding the object could get at a key. It stops at a secret key, a
decryptor, a keyring or a private key, and records the path.
"""

from __future__ import annotations

import functools
import types
import weakref
from collections import deque
from collections.abc import Iterator

import numpy as np
import tenseal.sealapi as sa
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

import fedshield.protocols.he as he
from fedshield.crypto.identity import Identity
from fedshield.crypto.keys import KeyPair

__all__ = ["SECRET_TYPES", "reachable_secrets"]

_KEYRINGS = tuple(
    getattr(he, name) for name in ("HEKeyring", "ThresholdKeyring") if hasattr(he, name)
)
SECRET_TYPES: tuple[type, ...] = (
    sa.SecretKey,
    sa.Decryptor,
    *_KEYRINGS,
    KeyPair,
    Identity,
    x25519.X25519PrivateKey,
    ed25519.Ed25519PrivateKey,
)
_ATOMS = (str, bytes, bytearray, memoryview, int, float, complex, bool, type(None),
          np.ndarray, np.generic, type, types.ModuleType, range)  # fmt: skip


def reachable_secrets(root: object, *, name: str = "server", limit: int = 200_000):
    """``(paths, walked)``: the path to every secret (:data:`SECRET_TYPES`, or a TenSEAL
    context that holds a secret key) reachable from ``root``, and how many objects the walk
    visited (at most ``limit``)."""
    seen: set[int] = set()
    queue: deque[tuple[object, str]] = deque([(root, name)])
    found: list[str] = []
    walked = 0
    while queue and walked < limit:
        obj, path = queue.popleft()
        if id(obj) in seen or isinstance(obj, _ATOMS):
            continue
        seen.add(id(obj))
        walked += 1
        if isinstance(obj, SECRET_TYPES) or _tenseal_context_with_key(obj):
            found.append(f"{path} ({type(obj).__name__})")
            continue
        queue.extend((child, path + step) for step, child in _children(obj))
    return found, walked


def _tenseal_context_with_key(obj: object) -> bool:
    check = getattr(obj, "has_secret_key", None)
    return type(obj).__module__.startswith("tenseal") and callable(check) and bool(check())


def _children(obj: object) -> Iterator[tuple[str, object]]:
    if isinstance(obj, dict | types.MappingProxyType):
        for key, value in list(obj.items()):
            yield f"[{key!r}]", key
            yield f"[{key!r}]", value
        return
    if isinstance(obj, list | tuple | set | frozenset | deque):
        yield from ((f"[{i}]", item) for i, item in enumerate(list(obj)))
        return
    yield from _callable_children(obj)
    if isinstance(obj, weakref.ref):
        yield "()", obj()
    if isinstance(obj, weakref.finalize):
        yield ".peek()", obj.peek()
    attributes = getattr(obj, "__dict__", None)
    if isinstance(attributes, dict):
        yield from ((f".{k}", v) for k, v in list(attributes.items()))
    for klass in type(obj).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                yield f".{slot}", getattr(obj, slot)


def _callable_children(obj: object) -> Iterator[tuple[str, object]]:
    if isinstance(obj, types.MethodType):
        yield ".__self__", obj.__self__
        yield ".__func__", obj.__func__
    elif isinstance(obj, types.FunctionType):
        for i, cell in enumerate(obj.__closure__ or ()):
            try:
                yield f".__closure__[{i}]", cell.cell_contents
            except ValueError:  # an empty cell
                continue
        yield ".__defaults__", obj.__defaults__
        yield ".__kwdefaults__", obj.__kwdefaults__
    elif isinstance(obj, functools.partial):
        yield ".func", obj.func
        yield ".args", obj.args
        yield ".keywords", obj.keywords
