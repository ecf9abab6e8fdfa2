"""Threshold ``he`` rounds: sites encrypt under the collective key (:mod:`.threshold_keys`), the
server adds, and only all sites together decrypt the sum.

Threat model. The server may deviate. It may collude with all but one site as long as those
sites encrypt honestly (semi-honest colluders): it cannot decrypt an honest site's ciphertext,
which needs every site's key share. **Limit**: nothing proves that a contribution is a
well-formed encryption, so a site that colludes with the server *and deviates* can send a
ciphertext whose second polynomial carries a chosen multiple of a constant; the decrypted sum
then reveals the honest sites' key shares (``test_he_threshold_attacks.py``, an expected
failure). Closing it needs zero-knowledge proofs of well-formed encryption (Mouchet et al.,
PETS 2021, section 7); until then use ``secagg`` against actively malicious sites. The
server alone cannot mount it: every contribution is signed by a roster site. It cannot make
the sites
decrypt anything but the round's true sum: each site checks the sum against the
contributors' signed, committed ciphertexts (:mod:`.spotcheck`) before its partial
decryption, and partially decrypts one sum per round, ever (two sums that differ by one site
would reveal that site). Sites commit to their ciphertexts before any is revealed, so a
colluding site cannot submit the negation of an honest one to cancel it from the sum. Each
partial is flooded (:mod:`fedshield.crypto.threshold`), so it reveals nothing of the key
share beyond the sum. The server learns the sum (it holds every partial), as with
``secagg``; the sites decode it and check it is on the grid, as with shared-key ``he``.

Dropouts: none. Decryption needs every site's share (n-of-n), and a site partially decrypts
only a sum that holds its own contribution: a site missing at any stage aborts the round,
which then has no result (t-of-n is future work: the issue's note).

Wire: ciphertexts travel as bit-packed coefficients (:mod:`.coefficients`); the server adds
them with numpy and never parses a SEAL object.

Stages (:class:`~fedshield.protocols.he.common.ThresholdStage`): ``commit`` (each site: the
signed Merkle root of its ciphertexts) → ``input`` (the server: every signed root; each site:
its ciphertexts) → ``open`` (the server: the sum; each site: its committed blocks at the
sum's spot-check positions) → ``decrypt`` (the server: every site's openings; each site
checks them and sends its partial decryption) → ``aggregate`` (the server: the sum of the
partials; each site decodes the sum into :attr:`aggregate`).
"""

from __future__ import annotations

import struct

import numpy as np

from fedshield import wire
from fedshield._validate import check_instance
from fedshield.crypto import merkle
from fedshield.crypto.identity import SIGNATURE_BYTES, Identity
from fedshield.crypto.merkle import HASH_BYTES
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
from fedshield.protocols.he import coefficients, spotcheck
from fedshield.protocols.he.client import HEClient
from fedshield.protocols.he.common import (
    CIPHERTEXT_COMMIT_LABEL,
    THRESHOLD_ID,
    THRESHOLD_STAGES,
    ThresholdStage,
)
from fedshield.protocols.he.params import HEPlan
from fedshield.protocols.he.threshold_keys import ThresholdKeyring
from fedshield.protocols.roster import Roster

__all__ = ["ThresholdClient", "ThresholdServer"]


def _statement(round: int, params_id: bytes, site: int, root: bytes) -> bytes:
    return struct.pack("<II", round, site) + params_id + root


def _shape(plan: HEPlan) -> tuple[int, int, int, int]:
    """Coefficients of a round's ciphertexts: (ciphertexts, 2, data primes, degree)."""
    return (plan.n_ciphertexts, 2, len(plan.coeff_bits) - 1, plan.poly_degree)


def _opening_bytes(plan: HEPlan) -> int:
    """One site's openings: PER_CIPHERTEXT blocks and paths per ciphertext."""
    leaves = int(np.prod(_shape(plan))) // spotcheck.BLOCK
    each = 8 * spotcheck.BLOCK + merkle.depth(leaves) * HASH_BYTES
    return plan.n_ciphertexts * spotcheck.PER_CIPHERTEXT * each


def data_moduli(plan: HEPlan) -> list[int]:
    """The primes of the data level (the ciphertexts' modulus)."""
    parms = plan.context().first_context_data().parms()
    return [m.value() for m in parms.coeff_modulus()]


class ThresholdClient(HEClient):
    """Site side of a threshold round: commits, encrypts under the collective key, checks the
    sum, partially decrypts it, and decodes the combined result.

    ``roster`` and ``identity``: the federation's roster and this site's identity (it signs its
    commitment and checks everyone's).
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
        self.roots: dict[int, bytes] = {}
        self._mine: np.ndarray | None = None  # this site's ciphertexts' coefficients
        self._tree: list[list[bytes]] = []
        self._total: np.ndarray | None = None
        self._where: np.ndarray | None = None

    def _check_params(self, message: wire.Message, fields: int) -> None:
        message.require_fields(fields)
        if message.raw(0, length=32) != self.plan.params_id:
            raise WrongShape("the server's HE parameters differ from this site's")

    @handles(ThresholdStage.COMMIT)
    def _commit(self, stage: str, message: wire.Message) -> bytes:
        self._check_params(message, 1)
        self._mine = np.stack([read_ciphertext(blob).data for blob in self._encrypt()])
        if self._mine.shape != _shape(self.plan):
            raise WrongShape("the ciphertexts are not of the plan's shape")
        self._tree = spotcheck.commit(self._mine)
        root = self._tree[-1][0]
        statement = _statement(self.round, self.plan.params_id, self.client_id, root)
        signature = self.roster.sign(self.identity, CIPHERTEXT_COMMIT_LABEL, statement)
        return self._client_message(stage, [root, signature])

    @handles(ThresholdStage.INPUT)
    def _send_ciphertexts(self, stage: str, message: wire.Message) -> bytes:
        self._check_params(message, 4)
        # Only once every site is bound to its ciphertexts is this one revealed: an accomplice
        # of the server cannot then commit to the negation of an honest site's.
        self.roots = self._signed_roots(message)
        return self._client_message(stage, [coefficients.pack(self._mine)])

    def _signed_roots(self, message: wire.Message) -> dict[int, bytes]:
        """Every site's root, its signature checked; all sites, this one's its own."""
        sites = message.array(1, dtype="<u4").tolist()
        if sorted(sites) != list(self.roster.sites) or len(sites) != self.plan.n_clients:
            raise UnknownSender(
                f"threshold he sums every site's ciphertexts; the server lists {sorted(sites)}: "
                "refused"
            )
        raw_roots = message.raw(2, length=HASH_BYTES * len(sites))
        signatures = message.raw(3, length=SIGNATURE_BYTES * len(sites))
        roots = {}
        for k, site in enumerate(sites):
            root = bytes(raw_roots[HASH_BYTES * k : HASH_BYTES * (k + 1)])
            signature = signatures[SIGNATURE_BYTES * k : SIGNATURE_BYTES * (k + 1)]
            statement = _statement(self.round, self.plan.params_id, site, root)
            self.roster.verify(site, signature, CIPHERTEXT_COMMIT_LABEL, statement)
            roots[site] = root
        if roots[self.client_id] != self._tree[-1][0]:
            raise ProtocolAbort("the server relayed another root under this site's name")
        return roots

    @handles(ThresholdStage.OPEN)
    def _open(self, stage: str, message: wire.Message) -> bytes:
        self._check_params(message, 2)
        self._total = coefficients.unpack(message.view(1), _shape(self.plan), self.moduli)
        self._where = spotcheck.positions(self.round, self.plan.params_id, self.roots, self._total)
        return self._client_message(
            stage, [spotcheck.open_blocks(self._mine, self._tree, self._where)]
        )

    @handles(ThresholdStage.DECRYPT)
    def _partially_decrypt(self, stage: str, message: wire.Message) -> bytes:
        self._check_params(message, 2)
        each = _opening_bytes(self.plan)
        blob = message.raw(1, length=each * len(self.roots))
        leaves = spotcheck.blocks(self._total).shape[0]
        opened = [
            spotcheck.read_openings(
                blob[k * each : (k + 1) * each], self.roots[site], self._where, leaves
            )
            for k, site in enumerate(sorted(self.roots))
        ]
        spotcheck.check_sum(self._total, self._where, opened, self.moduli)
        partials = self.keyring.partial(self.round, self._sums())
        return self._client_message(stage, [partials.reshape(-1)])

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
        self.aggregate = self._decode_slots(flat, self.plan.n_clients)
        return self._client_message(stage, [])


class ThresholdServer(ServerSession):
    """Server side of a threshold round: relays commitments, adds the ciphertexts'
    coefficients, relays the sites' openings, and adds the partial decryptions. Holds no key.
    """

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
        self.roots: dict[int, bytes] = {}
        self.signatures: dict[int, bytes] = {}
        self.total = np.zeros(_shape(plan), np.uint64)
        self.openings: dict[int, bytes] = {}
        self.partials = np.zeros((plan.n_ciphertexts, len(self.moduli), plan.poly_degree),
                                 np.uint64)  # fmt: skip

    def describe(self) -> dict:
        p = self.plan
        return {"scheme": "bfv", "keys": "threshold", "poly_degree": p.poly_degree,
                "plain_bits": p.plain_bits, "values_per_slot": p.per_slot,
                "ciphertexts": p.n_ciphertexts, "flood_bits": p.flood_bits}  # fmt: skip

    def _max_message_bytes(self, stage: str) -> int:
        sizes = {
            ThresholdStage.COMMIT: HASH_BYTES + SIGNATURE_BYTES,
            ThresholdStage.INPUT: coefficients.packed_bytes(self.total.size),
            ThresholdStage.OPEN: _opening_bytes(self.plan),
            ThresholdStage.DECRYPT: self.partials.nbytes,
        }
        return 256 + sizes.get(stage, 0)

    def _broadcast(self, stage: str, fields: list) -> dict[int, bytes]:
        message = self._server_message(stage, [self.plan.params_id, *fields])
        return dict.fromkeys(sorted(self.alive), message)

    @closes(ThresholdStage.COMMIT, ThresholdStage.INPUT, ThresholdStage.OPEN,
            ThresholdStage.DECRYPT)  # fmt: skip
    def _check_everyone(self, stage: str) -> None:
        if self.alive != set(self.clients):
            missing = sorted(set(self.clients) - self.alive)
            raise ProtocolAbort(
                f"round {self.round}: threshold he needs every site (n-of-n); {missing} "
                f"missing at {stage}"
            )

    @broadcasts(ThresholdStage.COMMIT)
    def _ask_for_commitments(self, stage: str) -> dict[int, bytes]:
        return self._broadcast(stage, [])

    @receives(ThresholdStage.COMMIT)
    def _take_commitment(self, stage: str, sender: int, message: wire.Message) -> None:
        message.require_fields(2)
        root = bytes(message.raw(0, length=HASH_BYTES))
        signature = bytes(message.raw(1, length=SIGNATURE_BYTES))
        statement = _statement(self.round, self.plan.params_id, sender, root)
        self.roster.verify(sender, signature, CIPHERTEXT_COMMIT_LABEL, statement)
        self.roots[sender], self.signatures[sender] = root, signature

    @broadcasts(ThresholdStage.INPUT)
    def _ask_for_ciphertexts(self, stage: str) -> dict[int, bytes]:
        sites = sorted(self.roots)
        return self._broadcast(stage, [
            np.array(sites, np.uint32), b"".join(self.roots[c] for c in sites),
            b"".join(self.signatures[c] for c in sites),
        ])  # fmt: skip

    @receives(ThresholdStage.INPUT)
    def _take_ciphertexts(self, stage: str, sender: int, message: wire.Message) -> None:
        message.require_fields(1)
        values = coefficients.unpack(message.view(0), self.total.shape, self.moduli)
        coefficients.add_into(self.total, values, self.moduli)

    @broadcasts(ThresholdStage.OPEN)
    def _send_sum(self, stage: str) -> dict[int, bytes]:
        return self._broadcast(stage, [coefficients.pack(self.total)])

    @receives(ThresholdStage.OPEN)
    def _take_openings(self, stage: str, sender: int, message: wire.Message) -> None:
        message.require_fields(1)
        self.openings[sender] = bytes(message.raw(0, length=_opening_bytes(self.plan)))

    @broadcasts(ThresholdStage.DECRYPT)
    def _relay_openings(self, stage: str) -> dict[int, bytes]:
        return self._broadcast(stage, [b"".join(self.openings[c] for c in sorted(self.openings))])

    @receives(ThresholdStage.DECRYPT)
    def _take_partial(self, stage: str, sender: int, message: wire.Message) -> None:
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
        message.require_fields(0)

    @closes(ThresholdStage.AGGREGATE)
    def _check_receipts(self, stage: str) -> None:
        if not self.alive:
            raise ProtocolAbort(f"round {self.round}: no site accepted the aggregate")

    def _reveal(self) -> Revealed:
        return Revealed(
            contributors=tuple(self.clients), weighted_sum=None, total_weight=None, dropped=()
        )
