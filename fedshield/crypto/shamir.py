"""Shamir t-of-n secret sharing of byte strings over GF(2^521 - 1).

Building block: use the SecAgg+ protocol unless you know why not.

Shamir, "How to share a secret", CACM 1979. A secret of up to 64 bytes is one field element
(p = 2^521 - 1 is a Mersenne prime, so any 520-bit value fits). The polynomial's random
coefficients come from ``secrets``. Each share carries the threshold and the secret's length,
so reconstruction from fewer than ``t`` shares raises instead of returning garbage.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

from fedshield._validate import check_bytes, check_instance, check_int
from fedshield.errors import InvalidShare, NotEnoughShares

__all__ = ["PRIME", "Share", "reconstruct", "split"]

PRIME = 2**521 - 1
MAX_SECRET_BYTES = 64
_ELEMENT_BYTES = 66  # 521 bits
_HEADER = struct.Struct("<HHB")  # x, threshold, secret length


@dataclass(frozen=True)
class Share:
    """One share: the point ``(x, y)``, the threshold ``t`` and the secret's length in bytes."""

    x: int
    y: int
    threshold: int
    secret_len: int

    def __post_init__(self) -> None:
        for name in ("x", "y", "threshold", "secret_len"):
            check_int(name, getattr(self, name))
        if not 1 <= self.x < 2**16 or not 0 <= self.y < PRIME:
            raise InvalidShare("share point outside the field")
        if not 1 <= self.threshold < 2**16 or not 0 < self.secret_len <= MAX_SECRET_BYTES:
            raise InvalidShare("share carries an impossible threshold or secret length")

    def to_bytes(self) -> bytes:
        """Fixed-size encoding (71 bytes)."""
        head = _HEADER.pack(self.x, self.threshold, self.secret_len)
        return head + self.y.to_bytes(_ELEMENT_BYTES, "little")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        """Parse :meth:`to_bytes`' output; raises :class:`InvalidShare` on anything else."""
        if len(data) != _HEADER.size + _ELEMENT_BYTES:
            raise InvalidShare(f"a share is {_HEADER.size + _ELEMENT_BYTES} bytes, got {len(data)}")
        x, t, length = _HEADER.unpack_from(data)
        return cls(x, int.from_bytes(data[_HEADER.size :], "little"), t, length)


SHARE_BYTES = _HEADER.size + _ELEMENT_BYTES


def split(secret: bytes, *, threshold: int, xs: list[int]) -> list[Share]:
    """Split ``secret`` into one share per evaluation point in ``xs`` (distinct, 1..65535).

    Any ``threshold`` of the shares reconstruct the secret; fewer reveal nothing about it.

    Raises:
        ValueError: on an empty or too long secret, a bad threshold, or repeated points.
    """
    check_bytes("secret", secret)
    check_int("threshold", threshold)
    if isinstance(xs, str | bytes):
        raise TypeError("xs must be a list of ints (the evaluation points)")
    xs = [check_int("each of xs", x) for x in xs]
    if not 0 < len(secret) <= MAX_SECRET_BYTES:
        raise ValueError(f"secret must be 1..{MAX_SECRET_BYTES} bytes")
    if len(set(xs)) != len(xs) or any(not 1 <= x < 2**16 for x in xs):
        raise ValueError("evaluation points must be distinct integers in 1..65535")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be in 1..{len(xs)} (the number of shares)")
    coefficients = [int.from_bytes(secret, "little")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares.append(Share(x, y, threshold, len(secret)))
    return shares


def reconstruct(shares: list[Share]) -> bytes:
    """Lagrange interpolation at 0 of at least ``threshold`` consistent shares.

    Raises:
        NotEnoughShares: fewer distinct shares than their threshold.
        InvalidShare: shares that disagree on threshold or length, or repeat a point.
    """
    if not shares:
        raise NotEnoughShares("no shares given")
    for share in shares:
        check_instance("each of shares", share, Share)
    t, length = shares[0].threshold, shares[0].secret_len
    if any(s.threshold != t or s.secret_len != length for s in shares):
        raise InvalidShare("shares disagree on threshold or secret length")
    if len({s.x for s in shares}) != len(shares):
        raise InvalidShare("two shares for the same point")
    if len(shares) < t:
        raise NotEnoughShares(f"{len(shares)} shares, the threshold is {t}")
    points = shares[:t]
    secret = 0
    for i, si in enumerate(points):
        num, den = 1, 1
        for j, sj in enumerate(points):
            if i != j:
                num = num * sj.x % PRIME
                den = den * (sj.x - si.x) % PRIME
        secret = (secret + si.y * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 2 ** (8 * length):
        raise InvalidShare("shares do not interpolate to a secret of the stated length")
    return secret.to_bytes(length, "little")
