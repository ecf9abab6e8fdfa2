"""Shamir t-of-n secret sharing of byte strings over GF(2^521 - 1).

Building block: use the SecAgg+ protocol unless you know why not.

Shamir, "How to share a secret", CACM 1979. A secret of up to 64 bytes is one field element
(p = 2^521 - 1 is a Mersenne prime, so any 520-bit value fits). The polynomial's random
coefficients come from ``secrets``. Each share carries the threshold and the secret's length,
so reconstruction from fewer than ``t`` shares raises instead of returning garbage.

Shares are a Reed-Solomon codeword (McEliece and Sarwate, 1981), so :func:`decode` corrects
forged ones: from ``m`` shares it recovers the secret despite up to ``(m - t) // 2`` wrong
ones and names them, in one pass (Gao, "A New Algorithm for Decoding Reed-Solomon Codes",
2003: interpolate through every share, run the extended Euclidean algorithm on that and
``prod (x - x_i)`` until the remainder's degree falls below ``(m + t) / 2``, divide).
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

from fedshield._validate import check_bytes, check_instance, check_int
from fedshield.errors import InvalidShare, NotEnoughShares

__all__ = ["PRIME", "Share", "decode", "reconstruct", "split"]

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
    t, length = _check_consistent(shares)
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


def decode(shares: list[Share]) -> tuple[bytes, list[int]]:
    """The secret and the points (``x``) of the forged shares, despite up to
    ``(len(shares) - t) // 2`` of them (Gao's Reed-Solomon decoder).

    Raises:
        NotEnoughShares: fewer distinct shares than their threshold.
        InvalidShare: inconsistent shares, or more forgeries than the shares can correct.
    """
    t, length = _check_consistent(shares)
    xs, ys = [s.x for s in shares], [s.y for s in shares]
    m = len(shares)
    g0 = [1]
    for x in xs:  # prod (X - x_i)
        g0 = _poly_mul(g0, [-x % PRIME, 1])
    r0, r1 = g0, _interpolate(xs, ys, g0)
    v0, v1 = [0], [1]
    while len(r1) - 1 >= (m + t) / 2:  # Euclid on (g0, g1), tracking g1's cofactor
        q, r = _poly_divmod(r0, r1)
        r0, r1 = r1, r
        v0, v1 = v1, _poly_sub(v0, _poly_mul(q, v1))
    f, rest = _poly_divmod(r1, v1)
    if any(rest) or len(f) > t:
        raise InvalidShare(f"more forged shares than {m} shares of threshold {t} can correct")
    forged = [x for x, y in zip(xs, ys, strict=True) if _poly_eval(f, x) != y]
    secret = f[0] if f else 0
    if len(forged) > (m - t) // 2 or secret >= 2 ** (8 * length):
        raise InvalidShare(f"more forged shares than {m} shares of threshold {t} can correct")
    return secret.to_bytes(length, "little"), forged


def _check_consistent(shares: list[Share]) -> tuple[int, int]:
    """The threshold and secret length the shares agree on."""
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
    return t, length


# --- polynomials over GF(PRIME): coefficient lists, lowest degree first, no trailing zeros ----
def _trim(a: list[int]) -> list[int]:
    while a and a[-1] == 0:
        a.pop()
    return a


def _poly_mul(a: list[int], b: list[int]) -> list[int]:
    if not a or not b:
        return []
    out = [0] * (len(a) + len(b) - 1)
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            out[i + j] = (out[i + j] + ai * bj) % PRIME
    return _trim(out)


def _poly_sub(a: list[int], b: list[int]) -> list[int]:
    n = max(len(a), len(b))
    a, b = a + [0] * (n - len(a)), b + [0] * (n - len(b))
    return _trim([(x - y) % PRIME for x, y in zip(a, b, strict=True)])


def _poly_divmod(a: list[int], b: list[int]) -> tuple[list[int], list[int]]:
    a = list(a)
    if len(a) < len(b):
        return [], _trim(a)
    inverse = pow(b[-1], -1, PRIME)
    q = [0] * (len(a) - len(b) + 1)
    for k in range(len(q) - 1, -1, -1):
        c = a[k + len(b) - 1] * inverse % PRIME
        q[k] = c
        for j, bj in enumerate(b):
            a[k + j] = (a[k + j] - c * bj) % PRIME
    return _trim(q), _trim(a[: len(b) - 1])


def _poly_eval(a: list[int], x: int) -> int:
    y = 0
    for c in reversed(a):
        y = (y * x + c) % PRIME
    return y


def _interpolate(xs: list[int], ys: list[int], g0: list[int]) -> list[int]:
    """The polynomial of degree < len(xs) through every point (Lagrange), in O(m^2): each
    basis polynomial is ``g0 / (X - x_i)`` (``g0 = prod (X - x_j)``) by synthetic division."""
    out = [0] * (len(g0) - 1)
    for xi, yi in zip(xs, ys, strict=True):
        basis = [0] * (len(g0) - 1)  # g0 / (X - xi), highest coefficient first down
        carry = 0
        for k in range(len(g0) - 1, 0, -1):
            carry = (g0[k] + carry * xi) % PRIME
            basis[k - 1] = carry
        scale = yi * pow(_poly_eval(basis, xi), -1, PRIME) % PRIME
        for k, c in enumerate(basis):
            out[k] = (out[k] + c * scale) % PRIME
    return _trim(out)
