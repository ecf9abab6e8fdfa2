"""The mask PRG: AES-256-CTR keyed by a 32-byte seed, filling preallocated buffers.

Building block: use the SecAgg+ protocol unless you know why not.

Each seed is used for exactly one mask (the key schedule derives a fresh seed per pair, round
and purpose), so a zero nonce is safe. ``update_into`` writes the keystream straight into the
output array's memory: no allocation per call, several GB/s on one core.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedshield._validate import check_bytes, check_instance, check_int

__all__ = ["SEED_BYTES", "add_mask", "mask_scratch", "ring_dtype"]

SEED_BYTES = 32
_NONCE = bytes(16)


def ring_dtype(bits: int) -> np.dtype:
    """The narrowest unsigned dtype holding ring elements of ``bits`` bits (uint16, 32 or 64).
    Arithmetic in it wraps modulo 2^16, 2^32 or 2^64, a multiple of the ring size 2^bits."""
    check_int("bits", bits, low=1, high=64)
    if bits <= 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32) if bits <= 32 else np.dtype(np.uint64)


def mask_scratch(length: int, bits: int) -> np.ndarray:
    """A reusable keystream buffer for :func:`add_mask` on ``length`` ring elements."""
    check_int("length", length, low=0)
    return np.empty(ring_dtype(bits).itemsize * length + 15, dtype=np.uint8)


def add_mask(
    acc: np.ndarray, seed: bytes, *, subtract: bool = False, scratch: np.ndarray | None = None
) -> None:
    """``acc += PRG(seed)`` (or ``-=``) in place, modulo 2^(bits of acc's dtype).

    The keystream is not reduced to the ring: the caller reduces the final sum once, which
    gives the same result since the ring size divides the dtype's modulus.
    ``scratch`` (from :func:`mask_scratch`) avoids an allocation per mask.
    """
    check_bytes("seed", seed, length=SEED_BYTES)
    check_instance("acc", acc, np.ndarray, "of ring elements")
    if acc.dtype.kind != "u" or not acc.flags.c_contiguous:
        raise ValueError("acc must be a contiguous unsigned array")
    nbytes = acc.nbytes
    if scratch is None or scratch.size < nbytes + 15:
        scratch = np.empty(nbytes + 15, dtype=np.uint8)
    # update_into wants 15 spare bytes after the output; the keystream is AES-CTR over zeros.
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_NONCE)).encryptor()
    encryptor.update_into(_zeros(nbytes), scratch)
    mask = scratch[:nbytes].view(acc.dtype)
    if subtract:
        acc -= mask
    else:
        acc += mask


_ZEROS = memoryview(bytes(0))


def _zeros(nbytes: int) -> memoryview:
    """A shared read-only buffer of zeros at least ``nbytes`` long (grown on demand)."""
    global _ZEROS
    if len(_ZEROS) < nbytes:
        _ZEROS = memoryview(bytes(nbytes))
    return _ZEROS[:nbytes]
