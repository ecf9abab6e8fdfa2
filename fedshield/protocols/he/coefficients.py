"""Threshold ``he``'s ciphertexts on the wire: raw coefficients, bit-packed.

Building block of :mod:`fedshield.protocols.he.threshold`. A threshold ciphertext travels as
its coefficients (:mod:`fedshield.crypto.seal_codec` reads them out of SEAL), each below its
60-bit prime, so packed at 60 bits (two 30-bit halves through
:mod:`fedshield.compress.bitpack`): 6% fewer bytes than SEAL's 64-bit words, and the server
adds them with numpy, never parsing a SEAL object. Every coefficient is checked against its
prime on arrival (:func:`unpack`).
"""

from __future__ import annotations

import numpy as np

from fedshield.compress import bitpack
from fedshield.errors import WrongShape

__all__ = ["HALF_BITS", "add_into", "pack", "packed_bytes", "unpack"]

HALF_BITS = 30  # a 60-bit coefficient as two 30-bit halves
_LOW = np.uint64((1 << HALF_BITS) - 1)


def packed_bytes(count: int) -> int:
    """Wire bytes of ``count`` coefficients."""
    return 2 * bitpack.packed_size(count, HALF_BITS)


def pack(coefficients: np.ndarray) -> bytes:
    """``coefficients`` (u64, each below 2^60) as packed bytes: high halves, then low."""
    flat = np.ascontiguousarray(coefficients, np.uint64).reshape(-1)
    high = bitpack.pack(flat >> np.uint64(HALF_BITS), HALF_BITS)
    return b"".join([high, bitpack.pack(flat & _LOW, HALF_BITS)])


def unpack(data: bytes | memoryview, shape: tuple, moduli: list[int]) -> np.ndarray:
    """Coefficients of ``shape`` (``(..., moduli, degree)``) from :func:`pack`'s bytes.

    Raises:
        WrongShape: not the expected length, or a coefficient not below its prime.
    """
    count = int(np.prod(shape))
    half = bitpack.packed_size(count, HALF_BITS)
    raw = memoryview(data).cast("B")
    if len(raw) != 2 * half:
        raise WrongShape(f"{len(raw)} bytes do not hold {count} packed coefficients")
    out = bitpack.unpack(raw[:half], count, HALF_BITS)
    out <<= np.uint64(HALF_BITS)  # in place: no temporaries of the whole vector
    out |= bitpack.unpack(raw[half:], count, HALF_BITS)
    out = out.reshape(shape)
    q = np.array(moduli, np.uint64).reshape((len(moduli), 1))
    if (out >= q).any():
        raise WrongShape("a coefficient is not reduced mod its prime")
    return out


def add_into(total: np.ndarray, values: np.ndarray, moduli: list[int]) -> None:
    """``total += values`` mod each limb's prime, in place (both reduced, shape
    ``(..., moduli, degree)``)."""
    q = np.array(moduli, np.uint64).reshape((len(moduli), 1))
    np.add(total, values, out=total)  # both below q < 2^61: no wrap
    np.subtract(total, q, out=total, where=total >= q)
