"""Argument checks for public constructors (pyca's habit): ``TypeError`` for a wrong type,
``ValueError`` (or the ``error`` passed, e.g. :class:`~fedshield.errors.ConfigError`) for a
wrong value. Each message names the argument and says what to pass.

Private: the wire format, the crypto primitives and the protocol sessions share these (it
imports nothing of fedshield, so every layer may use it).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

__all__ = [
    "check_bytes",
    "check_choice",
    "check_client_ids",
    "check_instance",
    "check_int",
    "check_real",
]

_U32_TOP = 2**32 - 1  # the wire's round and sender fields are u32; 0xFFFFFFFF is the server


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(
    name: str,
    value: object,
    *,
    low: int | None = None,
    high: int | None = None,
    optional: bool = False,
    error: type[ValueError] = ValueError,
) -> int | None:
    """``value`` as an ``int`` in ``[low, high]`` (``None`` allowed when ``optional``).

    ``bool`` is refused although it is an ``int`` subclass: ``True`` is not a bit count.
    """
    if value is None and optional:
        return None
    if not _is_int(value):
        what = "an int or None" if optional else "an int"
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise error(f"{name} must be {_range(low, high)}, got {value}")
    return value


def check_real(
    name: str,
    value: object,
    *,
    positive: bool = True,
    error: type[ValueError] = ValueError,
) -> float:
    """``value`` as a finite ``float`` (and ``> 0`` when ``positive``)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        kind = "positive and finite" if positive else "finite"
        raise error(f"{name} must be {kind}, got {value}")
    return value


def check_choice(
    name: str, value: object, choices: tuple[str, ...], *, error: type[ValueError] = ValueError
) -> str:
    """``value`` as one of the strings ``choices``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {choices}, got {type(value).__name__}")
    if value not in choices:
        listed = " or ".join(
            [", ".join(choices[:-1]), choices[-1]] if len(choices) > 1 else choices
        )
        raise error(f"{name} must be {listed}, got {value!r}")
    return value


def check_bytes(name: str, value: object, *, length: int | None = None) -> bytes:
    """``value`` as ``bytes`` (of exactly ``length`` bytes when given)."""
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise ValueError(f"{name} must be {length} bytes, got {len(value)}")
    return value


def check_instance(name: str, value: object, cls: type, hint: str = "") -> None:
    """Raise ``TypeError`` unless ``value`` is a ``cls``."""
    if not isinstance(value, cls):
        extra = f" ({hint})" if hint else ""
        raise TypeError(f"{name} must be a {cls.__name__}{extra}, got {type(value).__name__}")


def check_client_ids(name: str, values: Iterable[object]) -> tuple[int, ...]:
    """A non-empty collection of distinct client ids (ints in ``0..2^32 - 2``), sorted."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a list of client ids (ints), got {type(values).__name__}")
    ids = [check_int(f"each of {name}", c, low=0, high=_U32_TOP - 1) for c in values]
    if not ids:
        raise ValueError(f"{name} must name at least one client")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{name} must be distinct, got repeated ids in {sorted(ids)}")
    return tuple(sorted(ids))


def _range(low: int | None, high: int | None) -> str:
    if high is None:
        return f"at least {low}"
    if low is None:
        return f"at most {high}"
    return f"in {low}..{high}"
