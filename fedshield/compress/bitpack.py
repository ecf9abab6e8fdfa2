"""Bit-packing of b-bit unsigned integers into bytes (little-endian bit order), numba kernels.

``pack(values, bits)`` writes value ``i`` into bits ``[i·b, (i+1)·b)`` of the output, least
significant bit first; ``unpack`` inverts it. The numpy versions ``pack_reference`` and
``unpack_reference`` are the test oracles. Serial loops: at one byte per step they already run
at hundreds of MB/s; the kernels issue parallelises them over chunks.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["pack", "pack_reference", "packed_size", "unpack", "unpack_reference"]

MAX_BITS = 56  # the streaming accumulator holds up to 7 spare bits plus one value


def packed_size(length: int, bits: int) -> int:
    """Bytes that ``length`` values of ``bits`` bits occupy."""
    return (length * bits + 7) // 8


@njit(cache=True)
def _pack(values, bits, out):  # pragma: no cover - compiled
    acc = np.uint64(0)
    filled = 0
    j = 0
    mask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    for i in range(values.size):
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
def _unpack(data, length, bits, out):  # pragma: no cover - compiled
    acc = np.uint64(0)
    filled = 0
    j = 0
    mask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    for i in range(length):
        while filled < bits:
            acc |= np.uint64(data[j]) << np.uint64(filled)
            filled += 8
            j += 1
        out[i] = acc & mask
        acc >>= np.uint64(bits)
        filled -= bits


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in 1..{MAX_BITS}, got {bits}")


def pack(values: np.ndarray, bits: int) -> bytes:
    """Pack unsigned integers (each below ``2^bits``) into :func:`packed_size` bytes."""
    _check_bits(bits)
    values = np.asarray(values)
    if values.dtype not in (np.uint8, np.uint16, np.uint32, np.uint64):
        values = values.astype(np.uint64)
    values = np.ascontiguousarray(values)
    if values.ndim != 1:
        raise ValueError("values must be a flat array")
    out = np.zeros(packed_size(values.size, bits), dtype=np.uint8)
    _pack(values, bits, out)
    return out.tobytes()


def unpack(data: bytes, length: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack`; ``data`` must hold exactly :func:`packed_size` bytes."""
    _check_bits(bits)
    if len(data) != packed_size(length, bits):
        raise ValueError(f"{len(data)} bytes cannot hold exactly {length} values of {bits} bits")
    out = np.empty(length, dtype=np.uint64)
    _unpack(np.frombuffer(data, dtype=np.uint8), length, bits, out)
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
