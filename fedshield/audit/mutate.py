"""Message mutations for the fuzzer: each takes a wire message and a seeded generator and
returns a different message, as a faulty network or a hostile party would send it.

The mutations know the wire layout (:mod:`fedshield.wire`) as an attacker does: where the
header's fields and each field's length and dimensions sit, so that a mutation can lie in a
length field rather than only flip random bits.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np

from fedshield import wire

__all__ = ["MUTATIONS", "Mutation", "length_fields", "mutate"]

Mutation = Callable[[bytes, np.random.Generator], bytes]
_HEADER = 20  # magic 4 | version, protocol, stage, n_fields 1 each | round, sender, body_len 4 each
# header byte offsets and sizes of the fields a "wrong header" mutation rewrites
_HEADER_FIELDS = {
    "magic": (0, 4),
    "version": (4, 1),
    "protocol": (5, 1),
    "stage": (6, 1),
    "n_fields": (7, 1),
    "round": (8, 4),
    "sender": (12, 4),
}
_ITEMSIZE = {1: 1, 2: 2, 3: 4, 4: 8, 5: 8, 6: 4, 7: 8, 8: 4}  # the wire's dtype codes


def length_fields(data: bytes) -> list[int]:
    """Offsets of every little-endian u32 that states a length in ``data``: the header's body
    length, each bytes field's length and each array's dimensions (as far as the message
    parses; a broken tail is simply not walked)."""
    offsets = [16] if len(data) >= _HEADER else []
    if len(data) < _HEADER:
        return offsets
    pos, n_fields = _HEADER, data[7]
    try:
        for _ in range(n_fields):
            kind = data[pos]
            if kind == 1:
                offsets.append(pos + 1)
                pos += 5 + struct.unpack_from("<I", data, pos + 1)[0]
            elif kind == 2:
                code, ndim = data[pos + 1], data[pos + 2]
                dims = struct.unpack_from(f"<{ndim}I", data, pos + 3)
                offsets += [pos + 3 + 4 * k for k in range(ndim)]
                pos += 3 + 4 * ndim + int(np.prod(dims, dtype=np.int64)) * _ITEMSIZE.get(code, 1)
            else:
                break
    except (IndexError, struct.error):
        pass
    return [o for o in offsets if o + 4 <= len(data)]


def _bit_flips(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        pos = int(rng.integers(0, len(out)))
        out[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def _truncation(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(0, len(data)))]


def _extension(data: bytes, rng: np.random.Generator) -> bytes:
    extra = int(rng.choice([1, 4, 64, len(data) + 1]))
    if rng.random() < 0.5:
        return data + rng.integers(0, 256, extra, dtype=np.uint8).tobytes()
    return data + data[-extra:] if extra <= len(data) else data + data


def _length_lie(data: bytes, rng: np.random.Generator) -> bytes:
    offsets = length_fields(data)
    if not offsets:
        return _bit_flips(data, rng)
    pos = int(rng.choice(offsets))
    (true,) = struct.unpack_from("<I", data, pos)
    lies = [0, true - 1, true + 1, 2 * true + 1, 0xFFFFFFFF, int(rng.integers(0, 2**32))]
    lie = int(rng.choice([x for x in lies if 0 <= x < 2**32 and x != true] or [true ^ 1]))
    return data[:pos] + struct.pack("<I", lie) + data[pos + 4 :]


def _wrong_header(data: bytes, rng: np.random.Generator) -> bytes:
    if len(data) < _HEADER:
        return _bit_flips(data, rng) if data else b"\0"
    name = str(rng.choice(sorted(_HEADER_FIELDS)))
    pos, size = _HEADER_FIELDS[name]
    (true,) = struct.unpack_from({1: "<B", 4: "<I"}[size], data, pos)
    top = 2 ** (8 * size)
    choices = [true - 1, true + 1, 0, top - 1, int(rng.integers(0, top))]
    value = int(rng.choice([x for x in choices if 0 <= x < top and x != true] or [true ^ 1]))
    return data[:pos] + value.to_bytes(size, "little") + data[pos + size :]


def _non_finite(data: bytes, rng: np.random.Generator) -> bytes:
    """NaN or infinity where floats travel; elsewhere a float's bit pattern over the body."""
    bad = np.array([np.nan, np.inf, -np.inf])[int(rng.integers(0, 3))]
    try:
        message = wire.parse(data)
    except Exception:  # not a message to rewrite: write the pattern into the bytes
        message = None
    floats = [] if message is None else [
        k for k, f in enumerate(message.fields)
        if isinstance(f, np.ndarray) and f.dtype.kind == "f" and f.size
    ]  # fmt: skip
    if message is not None and floats:
        fields = list(message.fields)
        k = int(rng.choice(floats))
        values = np.array(fields[k], copy=True)
        flat = values.reshape(-1)
        flat[rng.integers(0, flat.size, max(1, flat.size // 50))] = bad
        fields[k] = values
        return wire.serialize(message.header, fields)
    pattern = struct.pack("<f", bad)
    if len(data) <= _HEADER + 4:
        return data + pattern
    pos = int(rng.integers(_HEADER, len(data) - 3))
    return data[:pos] + pattern + data[pos + 4 :]


def _field_shape(data: bytes, rng: np.random.Generator) -> bytes:
    """A well-framed message with one field dropped, added, or of the wrong kind."""
    try:
        message = wire.parse(data)
    except Exception:
        return _bit_flips(data, rng)
    fields = list(message.fields)
    choice = int(rng.integers(0, 3))
    if choice == 0 and fields:
        del fields[int(rng.integers(0, len(fields)))]
    elif choice == 1 or not fields:
        fields.append(b"extra")
    else:
        k = int(rng.integers(0, len(fields)))
        fields[k] = np.zeros(3, np.float32) if not isinstance(fields[k], np.ndarray) else b"x"
    return wire.serialize(message.header, fields)


MUTATIONS: dict[str, Mutation] = {
    "bit-flip": _bit_flips,
    "truncate": _truncation,
    "extend": _extension,
    "length-lie": _length_lie,
    "wrong-header": _wrong_header,
    "non-finite": _non_finite,
    "field-shape": _field_shape,
}


def mutate(name: str, data: bytes, rng: np.random.Generator) -> bytes:
    """``data`` mutated by :data:`MUTATIONS` ``[name]``, never equal to ``data`` (a mutation
    that gives the same bytes is tried again, then a byte is flipped)."""
    for _ in range(8):
        out = MUTATIONS[name](data, rng)
        if out != data:
            return out
    return _bit_flips(data, rng) if data else b"\0"
