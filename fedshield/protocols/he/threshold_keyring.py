"""A site's threshold-``he`` key material after the collective key generation: its key share,
the collective public key, and its Shamir share of the collective secret (t-of-n decryption).

Building block of :mod:`fedshield.protocols.he.threshold_keys` and
:mod:`fedshield.protocols.he.threshold`. Each site Shamir-shares its additive key share ``s_i``
(each coefficient of each data prime, a polynomial of degree ``t - 1``; Shamir, CACM 1979) and
seals share ``j`` to site ``j`` (AES-GCM under X25519 between their confirmed transport keys,
bound to the round, the sender and the receiver). Site ``j`` adds the shares it holds into a
Shamir share of ``s = sum s_i``; any ``t`` sites decrypt with their shares times their Lagrange
coefficients for the round's decrypting set, as in OpenFHE's threshold scheme and Mouchet et
al. (PETS 2021).
"""

from __future__ import annotations

import numpy as np
import tenseal.sealapi as sa

from fedshield._validate import check_instance
from fedshield.crypto.keys import open_share, seal_share
from fedshield.crypto.seal_codec import SealCiphertext
from fedshield.crypto.threshold import ThresholdKeys, combine, lagrange_share, split_share
from fedshield.errors import InvalidShare, ProtocolAbort
from fedshield.protocols.he.params import HEPlan

__all__ = [
    "ThresholdKeyring",
    "open_shamir",
    "seal_shamir",
    "sealed_share_bytes",
    "shamir_shares",
]


def sealed_share_bytes(plan: HEPlan) -> int:
    """One sealed Shamir share: the data primes' coefficients, a nonce and a tag."""
    return (len(plan.coeff_bits) - 1) * plan.poly_degree * 8 + 12 + 16


def shamir_shares(keys: ThresholdKeys, threshold: int, sites: list[int]) -> dict[int, np.ndarray]:
    """Site ``c``'s Shamir share of this site's additive key share, for each of ``sites``
    (points ``c + 1``)."""
    shares = split_share(keys.additive_share(), keys.data_moduli, threshold,
                         [c + 1 for c in sites])  # fmt: skip
    return {c: shares[c + 1] for c in sites}


def seal_shamir(share: np.ndarray, key: bytes, *, round: int, sender: int, receiver: int) -> bytes:
    """``share`` sealed for ``receiver`` (see :func:`fedshield.crypto.keys.seal_share`)."""
    data = np.ascontiguousarray(share, "<u8").tobytes()
    return seal_share(key, data, round=round, sender=sender, receiver=receiver)


def open_shamir(
    sealed: bytes | memoryview, key: bytes, keys: ThresholdKeys, *, round: int, sender: int,
    receiver: int,
) -> np.ndarray:  # fmt: skip
    """A sealed Shamir share, authenticated and checked (shape, reduced mod each prime).

    Raises:
        InvalidShare: tampered, replayed, misaddressed, or not a share of these parameters.
    """
    data = open_share(key, bytes(sealed), round=round, sender=sender, receiver=receiver)
    moduli = keys.data_moduli
    if len(data) != len(moduli) * keys.degree * 8:
        raise InvalidShare(f"site {sender}'s Shamir share is not of these parameters")
    values = np.frombuffer(data, "<u8").reshape(len(moduli), keys.degree).copy()
    if (values >= np.array(moduli, np.uint64)[:, None]).any():
        raise InvalidShare(f"site {sender}'s Shamir share is not reduced mod its primes")
    return values


class ThresholdKeyring:
    """A site's key share with the collective public key: encrypts, partially decrypts, and
    decodes a combined sum. Never constructed on the server."""

    def __init__(self, plan: HEPlan, keys: ThresholdKeys, shamir: np.ndarray, *, site: int) -> None:
        check_instance("plan", plan, HEPlan)
        check_instance("keys", keys, ThresholdKeys)
        if keys.encryptor is None:
            raise ValueError("keys: install the collective public key first")
        self.plan, self.keys, self.io, self.context = plan, keys, keys.io, keys.context
        self.shamir = shamir  # this site's Shamir share of the collective secret (NTT form)
        self.site = site
        self.encoder = sa.BatchEncoder(self.context)
        # (c0 + sum h_i, 0) decrypts to the same plaintext under any key: this site's share.
        self.decryptor = sa.Decryptor(self.context, keys.secret_key)
        self.partially_decrypted: set[int] = set()  # rounds: one aggregate each, ever
        self.encrypted: set[int] = set()  # rounds: one input each, ever
        self.views: dict[bytes, ThresholdKeyring] = {}  # other plans' (count sessions)

    def for_plan(self, plan: HEPlan) -> ThresholdKeyring:
        """This share under another plan on the same context (a count session,
        :mod:`fedshield.protocols.he.count_sum`), with its own once-per-round records, kept
        across rounds: one input and one partial decryption per round in each session kind."""
        if plan.params_id == self.plan.params_id:
            return self
        if plan.params_id not in self.views:
            self.views[plan.params_id] = ThresholdKeyring(plan, self.keys, self.shamir,
                                                          site=self.site)  # fmt: skip
        return self.views[plan.params_id]

    def encrypt(self, plaintext: sa.Plaintext) -> sa.Ciphertext:
        """A fresh encryption under the collective key."""
        return self.keys.encrypt(plaintext)

    def start_round(self, round: int) -> None:
        """Record that this site sends its input for ``round``: once per round, ever (the
        server could otherwise mix two sessions' inputs of one round into one sum)."""
        if round in self.encrypted:
            raise ProtocolAbort(f"round {round}: this site already sent its input")
        self.encrypted.add(round)

    def partial(
        self, round: int, ciphertexts: list[SealCiphertext], decryptors: list[int]
    ) -> np.ndarray:
        """This site's flooded partial decryptions of a round's summed ciphertexts,
        ``(count, moduli, degree)`` u64, for the round's ``decryptors`` (exactly the plan's
        threshold of distinct site ids, this one among them). Once per round: a second
        aggregate of the same round (one differing by a site, say) is refused."""
        if round in self.partially_decrypted:
            raise ProtocolAbort(f"round {round}: this site already decrypted an aggregate")
        if len(set(decryptors)) != self.plan.key_threshold or len(decryptors) != len(
            set(decryptors)
        ) or self.site not in decryptors:  # fmt: skip
            raise ProtocolAbort(
                f"round {round}: the decrypting sites {decryptors} are not exactly "
                f"{self.plan.key_threshold} distinct sites with this one among them"
            )
        self.partially_decrypted.add(round)
        points = [site + 1 for site in decryptors]
        own = self.site + 1
        self.keys.use_decryption_share(
            lagrange_share(self.shamir, own, points, self.keys.data_moduli)
        )
        return np.stack([self.keys.partial(ct) for ct in ciphertexts])

    def decrypt_combined(self, ct: SealCiphertext, partials_sum: np.ndarray) -> sa.Plaintext:
        """The plaintext of ``ct`` given the sum of every site's partial."""
        combined = sa.Ciphertext()
        self.io.load_object(combined, combine(ct, partials_sum, self.keys.data_moduli))
        plaintext = sa.Plaintext()
        self.decryptor.decrypt(combined, plaintext)
        return plaintext
