"""Threshold ``he`` rounds: sites encrypt under the collective key (:mod:`.threshold_keys`), the
server adds, and only all sites together decrypt the sum.

Threat model. The server may deviate; sites colluding with it (up to all but one) share
everything they hold but follow the protocol (semi-honest). Then no one decrypts an honest
site's ciphertext, which needs every site's key share, and the sites decrypt nothing but the
round's true sum:

- **The sum is checked whole before any partial decryption.** Each site sends, signed, random
  linear digests of its own ciphertexts for a challenge drawn from the sum it was shown
  (:mod:`fedshield.crypto.digest`), so fixed only once the server fixed the sum. Each site
  checks every site's signature over the same sum and that the digests add up to the sum's
  own: a sum that leaves out a site, is one site's ciphertext, or differs from the true sum in
  a single coefficient passes with probability at most ``2^-64`` whatever the server tries.
- A site sends one input and partially decrypts one sum per round, ever (two sums that differ
  by one site would reveal that site; two sessions of a round could be mixed into one sum).
- Each partial is flooded (:mod:`fedshield.crypto.threshold`): for a sum of honest
  encryptions it reveals nothing of the key share (statistical distance ``2^-40`` per
  ciphertext; ``K R 2^-40`` over ``K`` ciphertexts a round for ``R`` rounds).

The server learns the sum (it holds every partial), as with ``secagg``; the sites decode it and
check it is on the grid, as with shared-key ``he``.

**Limit: a site that colludes with the server and deviates breaks it.** Nothing proves that a
contribution is a well-formed encryption, nor that a signed digest is the digest of what the
site sent. Such a site can send a ciphertext whose second polynomial carries a chosen multiple
of a constant, and the decrypted sum then reveals the honest key shares; or it can sign a
false digest, and cancel an honest site from the sum the others decrypt
(``tests/protocols/test_he_threshold_attacks.py``: strict expected failures). Closing it needs
zero-knowledge proofs of well-formed encryption (Mouchet et al., PETS 2021); until then use
``secagg`` against actively malicious sites. The server alone can do neither: every digest is
signed by a roster site.

Dropouts: the key's threshold ``t`` (``HEConfig.threshold``; every site by default) is the
fewest sites whose Shamir shares decrypt (:mod:`.threshold_keyring`). Sites missing at
``input`` are left out of the sum as long as ``t`` sites sent theirs; once the sum is fixed,
every contributor must sign its digests, and exactly ``t`` of them (the lowest ids) decrypt:
never more, or the Lagrange-weighted shares would cancel out of sums of the partials and
leave relations among the flooding noises. A site missing then aborts the round (the sites
never re-decrypt: the round has no result). Any ``t`` colluding sites
decrypt whatever they hold, and a server that leaves honest sites out of the sum (claiming
they dropped) can shrink it to ``t`` contributors: with ``c`` colluding sites among them, the
sum less theirs is the others' sum, so ``t`` must exceed ``c + 1`` for no single update to be
exposed (the default, every site, holds for any ``c < n - 1``).

Wire: ciphertexts travel as bit-packed coefficients (:mod:`.coefficients`); the server adds
them with numpy and never parses a SEAL object.

Stages (:class:`~fedshield.protocols.he.common.ThresholdStage`): ``input`` (each site: its
ciphertexts) → ``digest`` (the server: the sum; each site: its signed digests) → ``decrypt``
(the server: every signed digest; each site checks them and sends its partial decryption) →
``aggregate`` (the server: the sum of the partials; each site decodes the sum into
:attr:`aggregate`).
"""

from __future__ import annotations

import struct

import numpy as np

from fedshield import wire
from fedshield._validate import check_instance
from fedshield.crypto import digest
from fedshield.crypto.identity import SIGNATURE_BYTES, Identity
from fedshield.crypto.seal_codec import SealCiphertext, read_ciphertext
from fedshield.crypto.threshold import parms_bytes
from fedshield.errors import ProtocolAbort, UnknownSender, WrongShape
from fedshield.protocols.base import (
    Revealed,
    ServerSession,
    broadcasts,
    closes,
    handles,
    receives,
)
from fedshield.protocols.he import coefficients
from fedshield.protocols.he.client import HEClient
from fedshield.protocols.he.common import (
    DIGEST_LABEL,
    THRESHOLD_ID,
    THRESHOLD_STAGES,
    ThresholdStage,
)
from fedshield.protocols.he.params import HEPlan
from fedshield.protocols.he.reports import SumReports, answer_aggregate
from fedshield.protocols.he.threshold_keys import ThresholdKeyring
from fedshield.protocols.roster import Roster

__all__ = ["ThresholdClient", "ThresholdServer", "data_moduli", "decrypting_sites"]


def _shape(plan: HEPlan) -> tuple[int, int, int, int]:
    """Coefficients of a round's ciphertexts: (ciphertexts, 2, data primes, degree)."""
    return (plan.n_ciphertexts, 2, len(plan.coeff_bits) - 1, plan.poly_degree)


def _digest_bytes(plan: HEPlan) -> int:
    return digest.DIGESTS * (len(plan.coeff_bits) - 1) * 8


def _seed(round: int, plan: HEPlan, total: np.ndarray) -> bytes:
    """The challenge's seed: the round, the parameters and the sum itself."""
    return digest.seed_for(struct.pack("<I", round) + plan.params_id, total)


def _statement(round: int, params_id: bytes, site: int, seed: bytes, values: bytes) -> bytes:
    """What a site signs: its digests of its own ciphertexts for the sum behind ``seed``."""
    return struct.pack("<II", round, site) + params_id + seed + values


def decrypting_sites(contributors: list[int], threshold: int) -> list[int]:
    """The round's decrypting sites: exactly ``threshold`` of them, the lowest ids among the
    contributors. Never more: with more than ``t`` Lagrange-weighted Shamir shares, their
    weighted sums at the points vanish, so sums of the partials would cancel the key and
    leave exact relations among the sites' flooding noises (the third review's finding)."""
    return sorted(contributors)[:threshold]


def data_moduli(plan: HEPlan) -> list[int]:
    """The primes of the data level (the ciphertexts' modulus)."""
    parms = plan.context().first_context_data().parms()
    return [m.value() for m in parms.coeff_modulus()]


class ThresholdClient(HEClient):
    """Site side of a threshold round: encrypts under the collective key, signs digests of its
    ciphertexts for the sum, checks everyone's against the sum, partially decrypts it, and
    decodes the combined result.

    ``roster`` and ``identity``: the federation's roster and this site's identity (it signs its
    digests and checks everyone's).
    """

    protocol_id = THRESHOLD_ID
    stages = THRESHOLD_STAGES
    keyring_type = ThresholdKeyring
    encrypts_per_fork = 64  # public-key encryption costs twice a seeded symmetric one

    def __init__(self, *, roster: Roster, identity: Identity, **kwargs) -> None:
        super().__init__(**kwargs)
        check_instance("roster", roster, Roster, "Roster.enrol or Roster.load")
        check_instance("identity", identity, Identity)
        roster.check_identity(self.client_id, identity.public_bytes)
        self.roster, self.identity = roster, identity
        self.moduli = self.keyring.keys.data_moduli
        self._mine: np.ndarray | None = None  # this site's ciphertexts' coefficients
        self._total: np.ndarray | None = None
        self._seed = b""
        self._expected: np.ndarray | None = None  # the sum's own digests
        self._contributors: list[int] = []

    def _check_params(self, message: wire.Message, fields: int) -> None:
        message.require_fields(fields)
        if message.raw(0, length=32) != self.plan.params_id:
            raise WrongShape("the server's HE parameters differ from this site's")

    @handles(ThresholdStage.INPUT)
    def _send_ciphertexts(self, stage: str, message: wire.Message) -> bytes:
        self._check_params(message, 1)
        self.keyring.start_round(self.round)
        self._mine = np.stack([read_ciphertext(blob).data for blob in self._encrypt()])
        if self._mine.shape != _shape(self.plan):
            raise WrongShape("the ciphertexts are not of the plan's shape")
        return self._client_message(stage, [coefficients.pack(self._mine)])

    @handles(ThresholdStage.DIGEST)
    def _sign_digests(self, stage: str, message: wire.Message) -> bytes:
        self._check_params(message, 2)
        self._total = coefficients.unpack(message.view(1), _shape(self.plan), self.moduli)
        self._seed = _seed(self.round, self.plan, self._total)
        weights = digest.challenge(self._seed, self._total.size)
        self._expected = digest.digests(self._total, weights, self.moduli)
        values = _pack_digests(digest.digests(self._mine, weights, self.moduli))
        statement = _statement(self.round, self.plan.params_id, self.client_id, self._seed, values)
        signature = self.roster.sign(self.identity, DIGEST_LABEL, statement)
        return self._client_message(stage, [values, signature])

    @handles(ThresholdStage.DECRYPT)
    def _partially_decrypt(self, stage: str, message: wire.Message) -> bytes:
        self._check_params(message, 4)
        total = np.zeros_like(self._expected)
        for values in self._signed_digests(message).values():
            total = total + np.frombuffer(values, "<u8").reshape(total.shape).astype(object)
        q = np.array(self.moduli, dtype=object)
        if not np.array_equal(total % q, self._expected):
            raise ProtocolAbort(
                "the aggregate is not the sum of every site's ciphertexts (the signed digests do "
                "not add up to its own): refused before any partial decryption"
            )
        decryptors = decrypting_sites(self._contributors, self.plan.key_threshold)
        if self.client_id not in decryptors:
            return self._client_message(stage, [])  # the sum is checked; others decrypt it
        partials = self.keyring.partial(self.round, self._sums(), decryptors)
        return self._client_message(stage, [partials.reshape(-1)])

    def _signed_digests(self, message: wire.Message) -> dict[int, bytes]:
        """Every site's digests, each signed over the sum this site was shown."""
        sites = message.array(1, dtype="<u4").tolist()
        strangers = set(sites) - set(self.roster.sites)
        if strangers or len(set(sites)) != len(sites) or self.client_id not in sites:
            raise UnknownSender(
                f"the server lists contributors {sites}: not distinct roster sites with this "
                "one among them: refused"
            )
        if len(sites) < self.plan.key_threshold:
            raise UnknownSender(
                f"the server lists {len(sites)} contributors; the key's threshold is "
                f"{self.plan.key_threshold}: refused"
            )
        self._contributors = sorted(sites)
        size = _digest_bytes(self.plan)
        blob = message.raw(2, length=size * len(sites))
        signatures = message.raw(3, length=SIGNATURE_BYTES * len(sites))
        out = {}
        for k, site in enumerate(sites):
            values = blob[size * k : size * (k + 1)]
            statement = _statement(self.round, self.plan.params_id, site, self._seed, values)
            signature = signatures[SIGNATURE_BYTES * k : SIGNATURE_BYTES * (k + 1)]
            self.roster.verify(site, signature, DIGEST_LABEL, statement)
            out[site] = values
        return out

    def _sums(self) -> list[SealCiphertext]:
        parms_id = parms_bytes(self.keyring.context.first_parms_id())
        return [SealCiphertext(parms_id, False, ct) for ct in self._total]

    @handles(ThresholdStage.AGGREGATE)
    def _decode(self, stage: str, message: wire.Message) -> bytes:
        self._check_params(message, 2)
        shape = (self.plan.n_ciphertexts, len(self.moduli), self.plan.poly_degree)
        raw = message.array(1, dtype="<u8", shape=(int(np.prod(shape)),)).reshape(shape)
        if (raw >= np.array(self.moduli, np.uint64)[None, :, None]).any():
            raise WrongShape("a combined partial is not reduced mod its prime")
        flat = np.empty((self.plan.n_ciphertexts, self.plan.slots), np.uint64)
        for i, (ct, partial_sum) in enumerate(zip(self._sums(), raw, strict=True)):
            plaintext = self.keyring.decrypt_combined(ct, partial_sum)
            flat[i] = self.keyring.encoder.decode_uint64(plaintext)
        decode = lambda: self._decode_slots(flat, len(self._contributors))  # noqa: E731
        self.aggregate, fields = answer_aggregate(self.plan, decode)
        return self._client_message(stage, fields)


def _pack_digests(values: np.ndarray) -> bytes:
    return np.array(values.tolist(), dtype="<u8").tobytes()


class ThresholdServer(ServerSession):
    """Server side of a threshold round: adds the ciphertexts' coefficients, relays the sites'
    signed digests, and adds the partial decryptions. Holds no key."""

    protocol_id = THRESHOLD_ID
    stages = THRESHOLD_STAGES
    large_payloads = True

    def __init__(self, *, round: int, clients, dim: int, plan: HEPlan, roster: Roster) -> None:
        super().__init__(round=round, clients=clients, dim=dim)
        check_instance("plan", plan, HEPlan, "from plan_for or the key setup")
        check_instance("roster", roster, Roster, "Roster.enrol or Roster.load")
        if plan.dim != dim or plan.config.keys != "threshold":
            raise ValueError("plan: not a threshold plan for this round's dim")
        if sorted(self.clients) != list(roster.sites):
            raise ValueError("threshold he: every round is over exactly the roster's sites")
        self.plan, self.roster = plan, roster
        self.moduli = data_moduli(plan)
        self.total = np.zeros(_shape(plan), np.uint64)
        self.contributors: list[int] = []
        self.seed = b""
        self.digests: dict[int, tuple[bytes, bytes]] = {}
        self.partials = np.zeros((plan.n_ciphertexts, len(self.moduli), plan.poly_degree),
                                 np.uint64)  # fmt: skip
        self.reports = SumReports(plan)  # a count session's decrypted sums
        self.reported: np.ndarray | None = None

    def describe(self) -> dict:
        p = self.plan
        return {"scheme": "bfv", "keys": "threshold", "poly_degree": p.poly_degree,
                "plain_bits": p.plain_bits, "values_per_slot": p.per_slot,
                "ciphertexts": p.n_ciphertexts, "flood_bits": p.flood_bits}  # fmt: skip

    def _max_message_bytes(self, stage: str) -> int:
        sizes = {
            ThresholdStage.INPUT: coefficients.packed_bytes(self.total.size),
            ThresholdStage.DIGEST: _digest_bytes(self.plan) + SIGNATURE_BYTES,
            ThresholdStage.DECRYPT: self.partials.nbytes,
            ThresholdStage.AGGREGATE: self.reports.max_bytes(),
        }
        return 256 + sizes.get(stage, 0)

    def _broadcast(self, stage: str, fields: list) -> dict[int, bytes]:
        message = self._server_message(stage, [self.plan.params_id, *fields])
        return dict.fromkeys(sorted(self.alive), message)

    @closes(ThresholdStage.INPUT)
    def _fix_contributors(self, stage: str) -> None:
        if len(self.alive) < self.plan.key_threshold:
            raise ProtocolAbort(
                f"round {self.round}: {len(self.alive)} sites sent ciphertexts; decrypting "
                f"needs {self.plan.key_threshold}"
            )
        self.contributors = sorted(self.alive)

    @closes(ThresholdStage.DIGEST, ThresholdStage.DECRYPT)
    def _check_every_contributor(self, stage: str) -> None:
        needed = set(self.contributors)
        if stage == ThresholdStage.DECRYPT:  # only the decrypting sites' partials are needed
            needed = set(decrypting_sites(self.contributors, self.plan.key_threshold))
        if not needed <= self.alive:
            missing = sorted(needed - self.alive)
            raise ProtocolAbort(
                f"round {self.round}: threshold he needs every contributor once the sum is "
                f"fixed; {missing} missing at {stage}"
            )

    @broadcasts(ThresholdStage.INPUT)
    def _ask_for_ciphertexts(self, stage: str) -> dict[int, bytes]:
        return self._broadcast(stage, [])

    @receives(ThresholdStage.INPUT)
    def _take_ciphertexts(self, stage: str, sender: int, message: wire.Message) -> None:
        message.require_fields(1)
        values = coefficients.unpack(message.view(0), self.total.shape, self.moduli)
        coefficients.add_into(self.total, values, self.moduli)

    @broadcasts(ThresholdStage.DIGEST)
    def _send_sum(self, stage: str) -> dict[int, bytes]:
        self.seed = _seed(self.round, self.plan, self.total)
        return self._broadcast(stage, [coefficients.pack(self.total)])

    @receives(ThresholdStage.DIGEST)
    def _take_digests(self, stage: str, sender: int, message: wire.Message) -> None:
        message.require_fields(2)
        values = bytes(message.raw(0, length=_digest_bytes(self.plan)))
        signature = bytes(message.raw(1, length=SIGNATURE_BYTES))
        statement = _statement(self.round, self.plan.params_id, sender, self.seed, values)
        self.roster.verify(sender, signature, DIGEST_LABEL, statement)
        self.digests[sender] = (values, signature)

    @broadcasts(ThresholdStage.DECRYPT)
    def _relay_digests(self, stage: str) -> dict[int, bytes]:
        sites = sorted(self.digests)
        return self._broadcast(stage, [
            np.array(sites, np.uint32), b"".join(self.digests[c][0] for c in sites),
            b"".join(self.digests[c][1] for c in sites),
        ])  # fmt: skip

    @receives(ThresholdStage.DECRYPT)
    def _take_partial(self, stage: str, sender: int, message: wire.Message) -> None:
        if sender not in decrypting_sites(self.contributors, self.plan.key_threshold):
            message.require_fields(0)  # a contributor that does not decrypt this round
            return
        message.require_fields(1)
        shape = self.partials.shape
        raw = message.array(0, dtype="<u8", shape=(int(np.prod(shape)),)).reshape(shape)
        if (raw >= np.array(self.moduli, np.uint64)[None, :, None]).any():
            raise WrongShape(f"client {sender}'s partial decryption is not reduced mod q")
        coefficients.add_into(self.partials, raw, self.moduli)

    @broadcasts(ThresholdStage.AGGREGATE)
    def _send_partials(self, stage: str) -> dict[int, bytes]:
        return self._broadcast(stage, [self.partials.reshape(-1)])

    @receives(ThresholdStage.AGGREGATE)
    def _take_receipt(self, stage: str, sender: int, message: wire.Message) -> None:
        self.reports.take(sender, message)

    @closes(ThresholdStage.AGGREGATE)
    def _check_receipts(self, stage: str) -> None:
        if not self.alive:
            raise ProtocolAbort(f"round {self.round}: no site accepted the aggregate")
        self.reported = self.reports.agreed(self.round, self.alive, len(self.contributors))

    def _reveal(self) -> Revealed:
        dropped = tuple(c for c in self.clients if c not in self.contributors)
        total = None if self.reported is None else float(len(self.contributors))
        return Revealed(contributors=tuple(self.contributors), weighted_sum=self.reported,
                        total_weight=total, dropped=dropped)  # fmt: skip
