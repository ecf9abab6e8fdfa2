"""Random linear digests mod a prime: a few scalars that bind a long vector of residues, and
that add up like the vectors do.

Building block of threshold ``he``'s aggregate check (:mod:`fedshield.protocols.he.threshold`):
each site sends ``<r, x_i> mod q`` for the challenge ``r``, and a sum ``y`` passes only if
``<r, y> = sum_i <r, x_i> mod q``. For any fixed ``y - sum x_i`` that is nonzero mod the prime
``q``, a challenge with independent entries uniform in ``[0, 2^32)`` makes the two agree with
probability at most ``2^-32`` (one nonzero coordinate: at most one of its ``2^32`` values
fits); :data:`DIGESTS` independent challenges make it ``2^-64``. The challenge is drawn (AES-256
in counter mode, from ``cryptography``) from a seed that hashes the vector being checked, so it
is fixed only once that vector is.
"""

from __future__ import annotations

import hashlib

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from numba import njit

__all__ = ["DIGESTS", "challenge", "digests", "seed_for"]

DIGESTS = 2  # independent challenges: a false sum passes with probability at most 2^-64
_HALF = np.uint64(30)
_LOW = np.uint64((1 << 30) - 1)


def seed_for(context: bytes, values: np.ndarray) -> bytes:
    """A 32-byte seed binding ``context`` (round, parameters) to ``values`` (SHA-256)."""
    inner = hashlib.sha256(np.ascontiguousarray(values, "<u8").data).digest()
    return hashlib.sha256(b"fedshield/digest" + context + inner).digest()


def challenge(seed: bytes, count: int) -> np.ndarray:
    """``(DIGESTS, count)`` u64 entries uniform in ``[0, 2^32)``, expanded from ``seed``."""
    if len(seed) != 32:
        raise ValueError("seed must be 32 bytes")
    stream = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor()
    raw = stream.update(bytes(4 * DIGESTS * count))
    return np.frombuffer(raw, "<u4").astype(np.uint64).reshape(DIGESTS, count)


@njit(cache=True)
def _dot(values, weights, q):  # pragma: no cover - compiled
    """``sum values[i] weights[i] mod q`` as its high and low 30-bit halves' sums mod q (each
    product of a 30-bit half and a 32-bit weight is below 2^62: no overflow)."""
    high = np.uint64(0)
    low = np.uint64(0)
    for i in range(values.size):
        high = (high + weights[i] * (values[i] >> _HALF)) % q
        low = (low + weights[i] * (values[i] & _LOW)) % q
    return high, low


def digests(values: np.ndarray, weights: np.ndarray, moduli: list[int]) -> np.ndarray:
    """``(DIGESTS, moduli)`` digests of ``values`` (shape ``(..., moduli, degree)``, each limb
    reduced mod its prime) under ``weights`` (from :func:`challenge`, one per value)."""
    shaped = np.ascontiguousarray(values, np.uint64)
    out = np.zeros((weights.shape[0], len(moduli)), dtype=object)
    for d in range(weights.shape[0]):
        w = weights[d].reshape(shaped.shape)
        for limb, q in enumerate(moduli):
            high, low = _dot(
                np.ascontiguousarray(shaped[..., limb, :]).reshape(-1),
                np.ascontiguousarray(w[..., limb, :]).reshape(-1),
                np.uint64(q),
            )
            out[d, limb] = (int(high) * (1 << 30) + int(low)) % q
    return out
