"""Multiparty BFV over SEAL: key shares, a collective public key, partial decryptions with
flooding noise, and their combination. No site ever holds the whole secret key.

Building block: use ``he`` with ``keys="threshold"`` (:mod:`fedshield.protocols.he`) unless you
know why not. The scheme is the additive (n-of-n) multiparty BFV of Mouchet, Troncoso-Pastoriza,
Bossuat and Hubaux, "Multiparty Homomorphic Encryption from Ring-Learning-With-Errors" (PETS
2021), on SEAL's own primitives:

- each site ``i`` draws a secret ``s_i`` with SEAL's ``KeyGenerator``; the collective secret is
  ``s = sum s_i`` and exists nowhere;
- ``a`` is a common random polynomial, expanded from a public seed (the parameters id), in
  the NTT domain (uniform there as in the coefficient domain: the NTT is a bijection);
- site ``i``'s public share is ``p_i = -(a s_i + e_i)``. SEAL's ``create_public_key`` gives
  ``(-(a' s_i + e_i), a')`` for a random ``a'`` of its own and a fresh error ``e_i``; adding
  ``(a' - a) s_i`` moves it onto the common ``a`` without touching the error;
- the collective public key is ``(sum p_i, a)``: SEAL's ``Encryptor`` encrypts under it;
- to decrypt a ciphertext ``(c0, c1)`` each site sends ``h_i = c1 s_i + E_i`` (SEAL's NTT and
  ``multiply_plain``, then the flooding noise ``E_i``), and ``(c0 + sum h_i, 0)`` decrypts
  under any key (its second polynomial is zero), so SEAL's ``Decryptor`` decodes it.

Raw polynomials go in and out of SEAL through :mod:`fedshield.crypto.seal_codec`.

Flooding (the rule :func:`flooding_bits`): a partial decryption reveals ``c1 s_i`` up to the
flooding noise; without it, it would reveal the ciphertext's noise ``v`` (which depends on the
key). Each site floods with integers uniform in ``[-2^F, 2^F)`` from the OS CSPRNG, so the
statistical distance between its partial and one simulated without ``v`` is at most
``N |v|_inf / 2^(F+1)``, summed over the ``N`` coefficients: we keep it below ``2^-40`` for the
noise bound ``B`` of :func:`noise_bound`, i.e. ``F = 40 + log2 N + log2 B - 1``. Decryption
stays correct while ``n 2^F + B < q / (2 t)``; the largest plain modulus ``t`` keeps a factor
of two over it (:func:`fedshield.protocols.he.params.plan_for`).
"""

from __future__ import annotations

import hashlib
import math
import os
import struct

import numpy as np
import tenseal.sealapi as sa

from fedshield.crypto.seal import SealIO
from fedshield.crypto.seal_codec import (
    SealCiphertext,
    SealPlaintext,
    read_ciphertext,
    read_plaintext,
    write_ciphertext,
    write_plaintext,
)
from fedshield.errors import InvalidCiphertext

__all__ = [
    "SECURITY_BITS",
    "ThresholdKeys",
    "combine",
    "common_polynomial",
    "flood",
    "flooding_bits",
    "lagrange_at_zero",
    "lagrange_share",
    "noise_bound",
    "parms_bytes",
    "split_share",
    "sum_public_shares",
]

SECURITY_BITS = 40  # statistical distance of a partial from its simulation: at most 2^-40


def parms_bytes(parms_id) -> bytes:
    """SEAL's ``parms_id`` (four u64) as the 32 bytes of its serialization."""
    return struct.pack("<4Q", *parms_id)


def _moduli(context_data) -> list[int]:
    return [m.value() for m in context_data.parms().coeff_modulus()]


def noise_bound(n: int) -> int:
    """A bound on the noise of a sum of ``n`` fresh public-key encryptions (N = 8192, the
    special prime dividing the encryption noise away): each one's noise is the mod-switch
    rounding ``r0 + r1 s`` with ``s`` the sum of ``n`` ternary keys, standard deviation about
    ``sqrt(N n / 18) < 22 sqrt(n)``, so the sum's is below ``22 n``. The bound,
    ``2^(8 + ceil(log2 n)) >= 256 n``, is over 11 standard deviations (measured maxima over a
    whole ciphertext: about ``78 n``; tests/crypto/test_threshold.py)."""
    return 2 ** (8 + math.ceil(math.log2(max(1, n))))


def flooding_bits(n: int, poly_degree: int) -> int:
    """``F``: each site's flooding noise is uniform in ``[-2^F, 2^F)`` (see the module)."""
    return SECURITY_BITS + int(math.log2(poly_degree)) + math.ceil(math.log2(noise_bound(n))) - 1


def common_polynomial(seed: bytes, moduli: list[int], degree: int) -> np.ndarray:
    """The common ``a`` (NTT form, one row per modulus) expanded from ``seed`` with SHAKE-256:
    every party derives the same one, and nobody chooses it."""
    stream = hashlib.shake_256(b"fedshield/threshold/a" + seed).digest(16 * len(moduli) * degree)
    words = np.frombuffer(stream, dtype="<u8").reshape(len(moduli), degree, 2)
    out = np.empty((len(moduli), degree), np.uint64)
    for row, q in enumerate(moduli):  # 128 random bits reduced mod q: bias below 2^-68
        wide = words[row, :, 0].astype(object) * (1 << 64) + words[row, :, 1].astype(object)
        out[row] = np.array(wide % q, dtype=np.uint64)
    return out


def _mulmod(x: np.ndarray, y: np.ndarray, q: int) -> np.ndarray:
    return np.array((x.astype(object) * y.astype(object)) % q, dtype=np.uint64)


def _addmod(x: np.ndarray, y: np.ndarray, q: int) -> np.ndarray:
    return (x + y) % np.uint64(q)  # both below q < 2^61: no overflow


class ThresholdKeys:
    """One site's key share: makes its public share, encrypts under the collective key once
    :meth:`install` took it, and partially decrypts.

    Args:
        io: a :class:`~fedshield.crypto.seal.SealIO` on the BFV context (N = 8192, data
            primes and one special prime).
        seed: the public seed of the common polynomial (the parameters id).
        flood_bits: ``F`` of :func:`flooding_bits`.
    """

    def __init__(self, io: SealIO, *, seed: bytes, flood_bits: int) -> None:
        self.io, self.context, self.flood_bits = io, io.context, flood_bits
        self.degree = self.context.key_context_data().parms().poly_modulus_degree()
        self.key_moduli = _moduli(self.context.key_context_data())
        self.data_moduli = _moduli(self.context.first_context_data())
        self.secret_key = sa.KeyGenerator(self.context).secret_key()
        self._share = read_plaintext(io.dump(self.secret_key)).data.reshape(
            len(self.key_moduli), self.degree
        )
        self.a = common_polynomial(seed, self.key_moduli, self.degree)
        self.encryptor: sa.Encryptor | None = None
        self._evaluator = sa.Evaluator(self.context)
        self._share_plain = self._plain(self.additive_share())
        self._decryption_plain = self._share_plain  # until a Shamir share replaces it

    def _plain(self, values: np.ndarray) -> sa.Plaintext:
        """A data-level NTT-form plaintext of ``values`` (one row per data modulus)."""
        parms = parms_bytes(self.context.first_parms_id())
        data = np.ascontiguousarray(values, np.uint64).reshape(-1)
        return self._load(sa.Plaintext(), write_plaintext(SealPlaintext(parms, data)))

    def additive_share(self) -> np.ndarray:
        """``s_i`` at the data level (NTT form, one row per data modulus): what this site
        Shamir-shares for t-of-n decryption. Secret: sealed to each holder, never sent bare."""
        return self._share[: len(self.data_moduli)].copy()

    def use_decryption_share(self, values: np.ndarray) -> None:
        """Partially decrypt with ``values`` (NTT form, reduced): this site's Shamir share of
        ``s`` times its Lagrange coefficient for the round's decrypting sites."""
        self._decryption_plain = self._plain(values)

    def _load(self, obj, data: bytes):
        self.io.load_object(obj, data)
        return obj

    def public_share(self) -> np.ndarray:
        """``-(a s_i + e_i)`` (NTT form, one row per key-level modulus), with SEAL's error."""
        generator = sa.KeyGenerator(self.context, self.secret_key)
        public = sa.PublicKey()
        generator.create_public_key(public)
        b, own_a = read_ciphertext(self.io.dump(public)).data
        out = np.empty_like(b)
        for row, q in enumerate(self.key_moduli):
            shift = (own_a[row].astype(object) - self.a[row].astype(object)) % q
            out[row] = _addmod(b[row], _mulmod(np.array(shift, np.uint64), self._share[row], q), q)
        return out

    def install(self, shares: list[np.ndarray]) -> None:
        """Take every site's public share (this one's included) and encrypt under their sum."""
        total = sum_public_shares(shares, self.key_moduli)
        key = SealCiphertext(parms_bytes(self.context.key_parms_id()), True,
                             np.stack([total, self.a]))  # fmt: skip
        self._public_key = write_ciphertext(key)
        self.encryptor = sa.Encryptor(self.context, self._load(sa.PublicKey(), self._public_key))

    def public_key_bytes(self) -> bytes:
        """The collective public key, serialized (what every site must agree on)."""
        if self.encryptor is None:
            raise RuntimeError("install the collective public key first")
        return self._public_key

    def encrypt(self, plaintext: sa.Plaintext) -> sa.Ciphertext:
        """A fresh encryption under the collective key."""
        if self.encryptor is None:
            raise RuntimeError("install the collective public key first")
        ct = sa.Ciphertext()
        self.encryptor.encrypt(plaintext, ct)
        return ct

    def partial(self, ciphertext: SealCiphertext) -> np.ndarray:
        """``c1 d_i + E_i`` (coefficient form, one row per data modulus) for a checked
        ciphertext at the data level, ``d_i`` the decryption share (``s_i`` by default)."""
        return flood(self.product(ciphertext), self.data_moduli, self.flood_bits)

    def product(self, ciphertext: SealCiphertext, *, additive: bool = False) -> np.ndarray:
        """``c1 d_i`` (or ``c1 s_i``) without flooding: never send it (auditors measure the
        noise with it)."""
        c1 = ciphertext.data[1]
        if not c1.any():
            raise InvalidCiphertext("a ciphertext with a zero second polynomial: refused")
        pair = SealCiphertext(ciphertext.parms_id, False, np.stack([c1, c1]), 1.0,
                              ciphertext.correction_factor)  # fmt: skip
        ct = self._load(sa.Ciphertext(), write_ciphertext(pair))
        self._evaluator.transform_to_ntt_inplace(ct)
        share = self._share_plain if additive else self._decryption_plain
        self._evaluator.multiply_plain_inplace(ct, share)
        self._evaluator.transform_from_ntt_inplace(ct)
        return read_ciphertext(self.io.dump(ct)).data[0]


def split_share(
    values: np.ndarray, moduli: list[int], threshold: int, points: list[int]
) -> dict[int, np.ndarray]:
    """Shamir's sharing (Shamir, CACM 1979) of every coefficient of ``values`` (one row per
    modulus, each reduced): a random polynomial of degree ``threshold - 1`` per coefficient
    (coefficients from the OS CSPRNG) whose value at 0 is the coefficient, evaluated at each
    of ``points`` (nonzero, distinct). Any ``threshold`` shares give ``values`` back
    (:func:`lagrange_at_zero`); fewer give nothing."""
    if not 1 <= threshold <= len(points) or 0 in points or len(set(points)) != len(points):
        raise ValueError(f"threshold {threshold} of points {points}: invalid")
    degree = values.shape[-1]
    out = {x: np.empty_like(values) for x in points}
    for row, q in enumerate(moduli):
        coefficients = [values[row].astype(object)]
        for _ in range(threshold - 1):
            raw = np.frombuffer(os.urandom(16 * degree), "<u8").reshape(degree, 2)
            wide = raw[:, 0].astype(object) * (1 << 64) + raw[:, 1].astype(object)
            coefficients.append(wide % q)  # 128 bits mod a 60-bit prime: bias below 2^-68
        for x in points:
            acc = np.zeros(degree, dtype=object)
            for c in reversed(coefficients):  # Horner
                acc = (acc * x + c) % q
            out[x][row] = np.array(acc, dtype=np.uint64)
    return out


def lagrange_at_zero(x: int, points: list[int], q: int) -> int:
    """The Lagrange coefficient of the share at ``x`` for interpolating at 0 from ``points``
    (distinct, ``x`` among them)."""
    if x not in points or len(set(points)) != len(points):
        raise ValueError(f"point {x} among {points}: not distinct points including it")
    value = 1
    for other in points:
        if other != x:
            value = value * other * pow(other - x, -1, q) % q
    return value


def lagrange_share(share: np.ndarray, x: int, points: list[int], moduli: list[int]) -> np.ndarray:
    """``share`` (the Shamir share at ``x``, one row per modulus) times its Lagrange
    coefficient for ``points``, each row mod its own prime: summed over ``points``, these give
    the shared value back."""
    rows = []
    for row, q in enumerate(moduli):
        factor = np.full(share.shape[-1], lagrange_at_zero(x, points, q), np.uint64)
        rows.append(_mulmod(share[row], factor, q))
    return np.stack(rows)


def sum_public_shares(shares: list[np.ndarray], moduli: list[int]) -> np.ndarray:
    """The first polynomial of the collective public key: the shares' sum mod each modulus."""
    total = np.zeros_like(shares[0])
    for share in shares:
        for row, q in enumerate(moduli):
            total[row] = _addmod(total[row], share[row], q)
    return total


def flood(poly: np.ndarray, moduli: list[int], bits: int) -> np.ndarray:
    """``poly`` plus one integer per coefficient uniform in ``[-2^bits, 2^bits)``, drawn from
    the OS CSPRNG (``os.urandom``), reduced mod each modulus (``bits`` may exceed a modulus's
    size, up to 67: the same integer is reduced mod each)."""
    if not 1 <= bits <= 67:
        raise ValueError(f"flooding of {bits} bits is out of range (1..67)")
    degree = poly.shape[-1]
    wide = bits + 1 > 64  # the integer is hi 2^64 + lo - 2^bits, hi below 2^(bits - 63)
    raw = np.frombuffer(os.urandom(8 * (1 + wide) * degree), dtype="<u8").reshape(degree, -1)
    out = np.empty_like(poly)
    for row, q in enumerate(moduli):
        q64 = np.uint64(q)
        if wide:
            hi = raw[:, 0] >> np.uint64(128 - bits - 1)
            value = (hi * np.uint64((1 << 64) % q)) % q64 + raw[:, 1] % q64
        else:
            value = (raw[:, 0] >> np.uint64(64 - bits - 1)) % q64
        noise = (value + np.uint64(q - (1 << bits) % q)) % q64  # every term below q: no overflow
        out[row] = _addmod(poly[row], noise, q)
    return out


def combine(ciphertext: SealCiphertext, partials_sum: np.ndarray, moduli: list[int]) -> bytes:
    """The serialized ``(c0 + sum h_i, 0)``: it decrypts to the plaintext under any key."""
    c0 = ciphertext.data[0]
    first = np.stack([_addmod(c0[row], partials_sum[row], q) for row, q in enumerate(moduli)])
    both = np.stack([first, np.zeros_like(first)])
    return write_ciphertext(
        SealCiphertext(ciphertext.parms_id, False, both, 1.0, ciphertext.correction_factor)
    )
