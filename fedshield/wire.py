"""The wire format: versioned header plus length-prefixed fields. No pickle, no code execution.

Layout (all integers little-endian)::

    header  = magic "FSHD" | version u8 | protocol u8 | stage u8 | n_fields u8
              | round u32 | sender u32 | body_len u32                 (20 bytes)
    field   = kind u8, then
              kind 1 (bytes): length u32 | raw bytes
              kind 2 (array): dtype u8 | ndim u8 | dims u32 * ndim | raw little-endian data

Parsing checks the magic, the version, every length against what is left, the dtype against a
whitelist, and that nothing trails the last field, before any payload is used. Callers then
check the header against the session's expectations with :meth:`Message.expect`.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from fedshield._validate import check_int
from fedshield.errors import (
    MalformedMessage,
    StageError,
    UnknownSender,
    WrongRound,
    WrongShape,
)

__all__ = [
    "MAGIC",
    "SERVER_ID",
    "VERSION",
    "Header",
    "Message",
    "parse",
    "serialize",
]

MAGIC = b"FSHD"
VERSION = 1
SERVER_ID = 0xFFFFFFFF
MAX_MESSAGE_BYTES = 1 << 31

_HEADER = struct.Struct("<4sBBBBIII")
_U32 = struct.Struct("<I")
_KIND_BYTES, _KIND_ARRAY = 1, 2
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<u1"),
    2: np.dtype("<u2"),
    3: np.dtype("<u4"),
    4: np.dtype("<u8"),
    5: np.dtype("<i8"),
    6: np.dtype("<f4"),
    7: np.dtype("<f8"),
    8: np.dtype("<i4"),
}
_DTYPE_CODES = {dt: code for code, dt in _DTYPES.items()}
_MAX_NDIM = 8


@dataclass(frozen=True)
class Header:
    """Who sent a message, for which protocol, stage and round."""

    protocol: int
    stage: int
    round: int
    sender: int

    def __post_init__(self) -> None:
        check_int("protocol", self.protocol, low=0, high=0xFF)
        check_int("stage", self.stage, low=0, high=0xFF)
        check_int("round", self.round, low=0, high=0xFFFFFFFF)
        check_int("sender", self.sender, low=0, high=0xFFFFFFFF)


@dataclass(frozen=True)
class Message:
    """A parsed message: its header and its fields (``bytes``, or read-only memoryviews when
    decoded with ``views``, or read-only numpy arrays)."""

    header: Header
    fields: tuple[bytes | memoryview | np.ndarray, ...]

    def expect(self, *, protocol: int, stage: int, round: int, sender: int | None = None) -> None:
        """Raise a typed error unless the header matches the session's expectations."""
        h = self.header
        if h.protocol != protocol or h.stage != stage:
            raise StageError(
                f"expected protocol {protocol} stage {stage}, got protocol {h.protocol} "
                f"stage {h.stage}"
            )
        if h.round != round:
            raise WrongRound(f"message is for round {h.round}, this is round {round}")
        if sender is not None and h.sender != sender:
            raise UnknownSender(f"header names sender {h.sender}, channel belongs to {sender}")

    def array(
        self, index: int, *, dtype: np.dtype | str, shape: tuple[int, ...] | None = None
    ) -> np.ndarray:
        """Field ``index`` as an array of exactly this dtype and shape (when not given: any
        one-dimensional length, so an id list never arrives as a scalar or a matrix)."""
        value = self._field(index)
        if not isinstance(value, np.ndarray):
            raise WrongShape(f"field {index} should be an array, got bytes")
        if value.dtype != np.dtype(dtype).newbyteorder("<"):
            raise WrongShape(f"field {index} has dtype {value.dtype}, expected {np.dtype(dtype)}")
        if shape is not None and value.shape != tuple(shape):
            raise WrongShape(f"field {index} has shape {value.shape}, expected {tuple(shape)}")
        if shape is None and value.ndim != 1:
            raise WrongShape(f"field {index} has shape {value.shape}, expected one dimension")
        return value

    def raw(self, index: int, *, max_len: int | None = None, length: int | None = None) -> bytes:
        """Field ``index`` as bytes, with an optional exact or maximum length."""
        return bytes(self.view(index, max_len=max_len, length=length))

    def chunks(self, index: int, *, size: int, count: int) -> list[bytes]:
        """Field ``index`` as exactly ``count`` items of ``size`` bytes (keys, signatures)."""
        blob = self.raw(index, length=size * count)
        return [blob[i * size : (i + 1) * size] for i in range(count)]

    def view(
        self, index: int, *, max_len: int | None = None, length: int | None = None
    ) -> memoryview:
        """Field ``index`` as a read-only memoryview (no copy when decoded with ``views``)."""
        value = self._field(index)
        if not isinstance(value, bytes | memoryview):
            raise WrongShape(f"field {index} should be bytes, got an array")
        if length is not None and len(value) != length:
            raise WrongShape(f"field {index} has {len(value)} bytes, expected {length}")
        if max_len is not None and len(value) > max_len:
            raise WrongShape(f"field {index} has {len(value)} bytes, at most {max_len} allowed")
        return memoryview(value).toreadonly()

    def require_fields(self, count: int) -> None:
        """Raise :class:`WrongShape` unless the message has exactly ``count`` fields."""
        if len(self.fields) != count:
            raise WrongShape(f"expected {count} fields, got {len(self.fields)}")

    def _field(self, index: int) -> bytes | memoryview | np.ndarray:
        if not 0 <= index < len(self.fields):
            raise WrongShape(f"missing field {index} (message has {len(self.fields)})")
        return self.fields[index]


def serialize(header: Header, fields: tuple[bytes | np.ndarray, ...] | list) -> bytes:
    """Serialise a header and its fields to bytes."""
    if len(fields) > 255:
        raise ValueError("at most 255 fields per message")
    parts: list[bytes | memoryview] = []
    for value in fields:
        if isinstance(value, bytes | bytearray | memoryview):
            data = memoryview(value).cast("B")
            parts += [bytes([_KIND_BYTES]), _U32.pack(len(data)), data]
        elif isinstance(value, np.ndarray):
            dtype = value.dtype.newbyteorder("<")
            code = _DTYPE_CODES.get(dtype)
            if code is None or value.ndim > _MAX_NDIM:
                raise TypeError(f"cannot encode an array of dtype {value.dtype}, ndim {value.ndim}")
            dims = b"".join(_U32.pack(d) for d in value.shape)
            data = np.ascontiguousarray(value, dtype=dtype).tobytes()
            parts += [bytes([_KIND_ARRAY, code, value.ndim]), dims, data]
        else:
            raise TypeError(f"cannot encode a field of type {type(value).__name__}")
    body_len = sum(len(part) for part in parts)
    head = _HEADER.pack(
        MAGIC,
        VERSION,
        header.protocol,
        header.stage,
        len(fields),
        header.round,
        header.sender,
        body_len,
    )
    return b"".join([head, *parts])  # one copy of the payload


def parse(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES, views: bool = False) -> Message:
    """Parse bytes into a :class:`Message`, checking every length before touching the payload.
    Bytes fields are copies, or read-only views of ``data`` with ``views`` (large payloads).

    Raises:
        MalformedMessage: on any framing problem (truncation, oversize, bad magic, dtype...).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage(f"expected bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    if len(view) > max_bytes:
        raise MalformedMessage(f"message of {len(view)} bytes exceeds the limit of {max_bytes}")
    if len(view) < _HEADER.size:
        raise MalformedMessage(f"truncated header: {len(view)} of {_HEADER.size} bytes")
    magic, version, protocol, stage, n_fields, rnd, sender, body_len = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise MalformedMessage("bad magic: not a fedshield message")
    if version != VERSION:
        raise MalformedMessage(f"unsupported wire version {version} (this build speaks {VERSION})")
    if _HEADER.size + body_len != len(view):
        raise MalformedMessage(
            f"body length field says {body_len} bytes, message carries {len(view) - _HEADER.size}"
        )
    pos = _HEADER.size
    fields: list[bytes | np.ndarray] = []
    for _ in range(n_fields):
        kind = _take(view, pos, 1)[0]
        pos += 1
        if kind == _KIND_BYTES:
            (length,) = _U32.unpack(_take(view, pos, 4))
            pos += 4
            chunk = _take(view, pos, length)
            fields.append(chunk.toreadonly() if views else bytes(chunk))
            pos += length
        elif kind == _KIND_ARRAY:
            code, ndim = _take(view, pos, 2)
            pos += 2
            dtype = _DTYPES.get(code)
            if dtype is None:
                raise MalformedMessage(f"unknown dtype code {code}")
            if ndim > _MAX_NDIM:
                raise MalformedMessage(f"array of {ndim} dimensions (at most {_MAX_NDIM})")
            shape = struct.unpack(f"<{ndim}I", _take(view, pos, 4 * ndim))
            pos += 4 * ndim
            if any(dim > len(view) for dim in shape):
                raise MalformedMessage(f"array dimension {max(shape)} exceeds the message size")
            nbytes = math.prod(shape) * dtype.itemsize
            chunk = _take(view, pos, nbytes)
            pos += nbytes
            fields.append(np.frombuffer(chunk, dtype=dtype).reshape(shape))
        else:
            raise MalformedMessage(f"unknown field kind {kind}")
    if pos != len(view):
        raise MalformedMessage(f"{len(view) - pos} trailing bytes after the last field")
    return Message(Header(protocol, stage, rnd, sender), tuple(fields))


def _take(view: memoryview, pos: int, n: int) -> memoryview:
    if n < 0 or pos + n > len(view):
        raise MalformedMessage(
            f"truncated: field needs {n} bytes at offset {pos}, have {len(view)}"
        )
    return view[pos : pos + n]
