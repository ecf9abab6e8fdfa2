"""Bit-packing of b-bit unsigned integers into bytes (little-endian bit order), numba kernels.

``pack(values, bits)`` writes value ``i`` into bits ``[i·b, (i+1)·b)`` of the output, least
significant bit first; ``unpack`` inverts it and ``unpack_add`` adds the values into an
accumulator in place (one pass, no temporary array). The numpy versions ``pack_reference`` and
``unpack_reference`` are the test oracles. The kernels run in parallel over groups of 64
values, which fill exactly ``b`` 64-bit words, so every group writes whole words of its own
(little-endian hosts, where word order is byte order); the last ``len % 64`` values stream in
byte by byte.
"""

from __future__ import annotations

import sys

import numpy as np
from numba import njit, prange

from fedshield.compress._parallel import parallel_kernel

__all__ = [
    "pack",
    "pack_buffer",
    "pack_into",
    "pack_reference",
    "packed_size",
    "unpack",
    "unpack_add",
    "unpack_reference",
]

MAX_BITS = 56  # the byte-streaming tail holds up to 7 spare bits plus one value
if sys.byteorder != "little":  # pragma: no cover
    raise ImportError("fedshield.compress.bitpack writes little-endian words")


def packed_size(length: int, bits: int) -> int:
    """Bytes that ``length`` values of ``bits`` bits occupy."""
    return (length * bits + 7) // 8


_GROUP = 64  # values per parallel task: 64 values of b bits fill exactly b 64-bit words


@parallel_kernel
def _pack_words(values, bits, words):  # pragma: no cover - compiled
    """Pack the first ``64·(len(values) // 64)`` values, one group of b words per task."""
    width = np.uint64(bits)
    mask = (np.uint64(1) << width) - np.uint64(1)
    for g in prange(values.size // _GROUP):
        acc = np.uint64(0)
        filled = np.uint64(0)
        w = np.uint64(g) * width
        base = np.uint64(g) * np.uint64(_GROUP)
        for k in range(_GROUP):
            v = np.uint64(values[base + np.uint64(k)]) & mask
            acc |= v << filled
            filled += width
            if filled >= np.uint64(64):
                words[w] = acc
                w += np.uint64(1)
                filled -= np.uint64(64)
                acc = v >> (width - filled) if filled > np.uint64(0) else np.uint64(0)


@njit(cache=True)
def _load_word(data, w):  # pragma: no cover - compiled
    """64-bit word ``w`` of the byte array ``data`` (any alignment: one unaligned load)."""
    i = w * np.uint64(8)
    word = np.uint64(0)
    for b in range(8):
        word |= np.uint64(data[i + np.uint64(b)]) << np.uint64(8 * b)
    return word


@parallel_kernel
def _unpack_words(data, length, bits, out, add):  # pragma: no cover - compiled
    """Unpack the first ``64·(length // 64)`` values into ``out``, or add them to it
    (``add``: wrapping in ``out``'s dtype), one group of b words per task."""
    width = np.uint64(bits)
    mask = (np.uint64(1) << width) - np.uint64(1)
    for g in prange(length // _GROUP):
        w = np.uint64(g) * width
        acc = _load_word(data, w)
        filled = np.uint64(64)
        i = np.uint64(g) * np.uint64(_GROUP)
        for _ in range(_GROUP):
            if filled >= width:
                value = acc & mask
                acc >>= width
                filled -= width
            else:  # the value straddles two words
                w += np.uint64(1)
                following = _load_word(data, w)
                value = (acc | (following << filled)) & mask
                acc = following >> (width - filled)
                filled = np.uint64(64) - (width - filled)
            out[i] = out[i] + value if add else value
            i += np.uint64(1)


@njit(cache=True)
def _pack_tail(values, start, bits, out):  # pragma: no cover - compiled
    """Stream ``values[start:]`` (start a multiple of 8) into ``out``, one byte at a time."""
    acc = np.uint64(0)
    filled = 0
    j = start // 8 * bits
    mask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    for i in range(start, values.size):
        acc |= (np.uint64(values[i]) & mask) << np.uint64(filled)
        filled += bits
        while filled >= 8:
            out[j] = np.uint8(acc & np.uint64(0xFF))
            acc >>= np.uint64(8)
            filled -= 8
            j += 1
    if filled > 0:
        out[j] = np.uint8(acc & np.uint64(0xFF))


@njit(cache=True)
def _unpack_tail(data, start, length, bits, out, add):  # pragma: no cover - compiled
    acc = np.uint64(0)
    filled = 0
    j = start // 8 * bits
    mask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    for i in range(start, length):
        while filled < bits:
            acc |= np.uint64(data[j]) << np.uint64(filled)
            filled += 8
            j += 1
        value = acc & mask
        out[i] = out[i] + value if add else value
        acc >>= np.uint64(bits)
        filled -= bits


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in 1..{MAX_BITS}, got {bits}")


def _flat_unsigned(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype not in (np.uint8, np.uint16, np.uint32, np.uint64):
        values = values.astype(np.uint64)
    values = np.ascontiguousarray(values)
    if values.ndim != 1:
        raise ValueError("values must be a flat array")
    return values


def pack_buffer(length: int, bits: int) -> np.ndarray:
    """A word-aligned uint8 buffer that :func:`pack_into` can fill for ``length`` values."""
    return np.empty(-(-packed_size(length, bits) // 8), dtype=np.uint64).view(np.uint8)


def pack_into(values: np.ndarray, bits: int, out: np.ndarray) -> int:
    """Pack into ``out`` (from :func:`pack_buffer`, reusable); returns the bytes written."""
    _check_bits(bits)
    values = _flat_unsigned(values)
    size = packed_size(values.size, bits)
    if out.dtype != np.uint8 or out.size < -(-size // 8) * 8 or out.ctypes.data % 8:
        raise ValueError("out must be a pack_buffer() of at least this length")
    _pack_words(values, bits, out[: size // 8 * 8].view(np.uint64))
    _pack_tail(values, values.size // _GROUP * _GROUP, bits, out)
    return size


def pack(values: np.ndarray, bits: int) -> memoryview:
    """Pack unsigned integers (each below ``2^bits``) into :func:`packed_size` bytes: a
    read-only view of a fresh buffer (a message field as it is, with no copy)."""
    values = _flat_unsigned(values)
    out = pack_buffer(values.size, bits)
    return memoryview(out)[: pack_into(values, bits, out)].toreadonly()


def _check_unpack(data: bytes, length: int, bits: int, dtype: np.dtype) -> None:
    _check_bits(bits)
    if len(data) != packed_size(length, bits):
        raise ValueError(f"{len(data)} bytes cannot hold exactly {length} values of {bits} bits")
    if dtype.kind != "u" or 8 * dtype.itemsize < bits:
        raise ValueError(f"{dtype} cannot hold {bits}-bit values")


def _run_unpack(data: bytes, length: int, bits: int, out: np.ndarray, add: bool) -> None:
    """The kernels on ``data`` as it lies: they read words byte-wise, so any alignment works
    without a copy (the compiler merges the bytes into one unaligned load)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    _unpack_words(raw, length, bits, out, add)
    _unpack_tail(raw, length // _GROUP * _GROUP, length, bits, out, add)


def unpack(
    data: bytes | memoryview, length: int, bits: int, dtype: np.dtype | type = np.uint64
) -> np.ndarray:
    """Inverse of :func:`pack`; ``data`` must hold exactly :func:`packed_size` bytes.

    ``dtype``: the unsigned output type; it must hold ``bits`` bits.
    """
    dtype = np.dtype(dtype)
    _check_unpack(data, length, bits, dtype)
    out = np.empty(length, dtype=dtype)
    _run_unpack(data, length, bits, out, False)
    return out


def unpack_add(data: bytes | memoryview, length: int, bits: int, out: np.ndarray) -> np.ndarray:
    """Add the values that :func:`pack` wrote into ``data`` to ``out`` in place, wrapping
    modulo ``2^(8 · out.itemsize)``, with no temporary array; returns ``out``.

    ``data``: exactly :func:`packed_size` bytes (bytes or a memoryview, at any offset);
    ``out``: a writable contiguous unsigned array of ``length`` values that holds ``bits`` bits.
    """
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
    if out.shape != (length,) or not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"out must be a writable contiguous array of {length} values")
    _check_unpack(data, length, bits, out.dtype)
    _run_unpack(data, length, bits, out, True)
    return out


def pack_reference(values: np.ndarray, bits: int) -> bytes:
    """Plain numpy packing through a bit matrix (the oracle)."""
    shifts = np.arange(bits, dtype=np.uint64)
    matrix = ((values.astype(np.uint64)[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(matrix.reshape(-1), bitorder="little").tobytes()


def unpack_reference(data: bytes, length: int, bits: int) -> np.ndarray:
    """Plain numpy unpacking (the oracle)."""
    flat = np.unpackbits(np.frombuffer(data, np.uint8), count=length * bits, bitorder="little")
    weights = np.left_shift(np.uint64(1), np.arange(bits, dtype=np.uint64))
    return (flat.reshape(length, bits).astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
