"""Threshold ``he`` rounds: sites encrypt under the collective key (:mod:`.threshold_keys`), the
server adds, and only all sites together decrypt the sum.

Threat model. The server may deviate and may collude with all but one site. It cannot decrypt
an honest site's ciphertext: that needs every site's key share. It cannot make the sites
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

Stages (:class:`~fedshield.protocols.he.common.ThresholdStage`): ``commit`` (each site: the
signed Merkle root of its ciphertexts) → ``input`` (the ciphertexts) → ``decrypt`` (the
server: the sum and its openings; each site: its partial decryption) → ``aggregate`` (the
server: the sum of the partials; each site decodes the sum into :attr:`aggregate`).
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
from fedshield.errors import ProtocolAbort, UnknownSender, WrongShape
from fedshield.protocols.base import broadcasts, closes, handles, receives
from fedshield.protocols.he import spotcheck
from fedshield.protocols.he.client import HEClient
from fedshield.protocols.he.common import (
    CIPHERTEXT_COMMIT_LABEL,
    THRESHOLD_ID,
    THRESHOLD_STAGES,
    ThresholdStage,
    load_ciphertexts,
    read_sizes,
)
from fedshield.protocols.he.server import HEServer
from fedshield.protocols.he.threshold_keys import ThresholdKeyring
from fedshield.protocols.roster import Roster

__all__ = ["ThresholdClient", "ThresholdServer"]


def _statement(round: int, params_id: bytes, site: int, root: bytes) -> bytes:
    return struct.pack("<II", round, site) + params_id + root


def _read_all(sizes: np.ndarray, blob: bytes | memoryview) -> list[SealCiphertext]:
    """The members of concatenated serialized ciphertexts (each already checked by SEAL)."""
    out, offset = [], 0
    for size in sizes:
        out.append(read_ciphertext(blob[offset : offset + int(size)]))
        offset += int(size)
    return out


def _coefficients(sizes: np.ndarray, blob: bytes | memoryview) -> np.ndarray:
    """``(ciphertexts, 2, moduli, degree)`` coefficients of concatenated serialized ones."""
    return np.stack([ct.data for ct in _read_all(sizes, blob)])


class ThresholdClient(HEClient):
    """Site side of a threshold round: commits, encrypts under the collective key, checks the
    sum, partially decrypts it, and decodes the combined result.

    ``roster`` and ``identity``: the federation's roster and this site's identity (it signs its
    commitment and checks everyone's).
    """

    protocol_id = THRESHOLD_ID
    stages = THRESHOLD_STAGES
    keyring_type = ThresholdKeyring

    def __init__(self, *, roster: Roster, identity: Identity, **kwargs) -> None:
        super().__init__(**kwargs)
        check_instance("roster", roster, Roster, "Roster.enrol or Roster.load")
        check_instance("identity", identity, Identity)
        roster.check_identity(self.client_id, identity.public_bytes)
        self.roster, self.identity = roster, identity
        self._blobs: list[memoryview] = []
        self._sums: list = []
        self._root = b""
        self.roots: dict[int, bytes] = {}

    def _check_params(self, message: wire.Message) -> None:
        if message.raw(0, length=32) != self.plan.params_id:
            raise WrongShape("the server's HE parameters differ from this site's")

    @handles(ThresholdStage.COMMIT)
    def _commit(self, stage: str, message: wire.Message) -> bytes:
        message.require_fields(1)
        self._check_params(message)
        self._blobs = self._encrypt()
        sizes = np.array([len(b) for b in self._blobs])
        self._root = spotcheck.commit(_coefficients(sizes, b"".join(self._blobs)))[-1][0]
        statement = _statement(self.round, self.plan.params_id, self.client_id, self._root)
        signature = self.roster.sign(self.identity, CIPHERTEXT_COMMIT_LABEL, statement)
        return self._client_message(stage, [self._root, signature])

    @handles(ThresholdStage.INPUT)
    def _send_ciphertexts(self, stage: str, message: wire.Message) -> bytes:
        message.require_fields(4)
        self._check_params(message)
        # Only once every site is bound to its ciphertexts is this one revealed: an accomplice
        # of the server cannot then commit to the negation of an honest site's.
        self.roots = self._signed_roots(message)
        sizes = np.array([len(b) for b in self._blobs], dtype=np.uint32)
        blob, self._blobs = b"".join(self._blobs), []
        return self._client_message(stage, [self.plan.params_id, sizes, blob])

    @handles(ThresholdStage.DECRYPT)
    def _partially_decrypt(self, stage: str, message: wire.Message) -> bytes:
        message.require_fields(4)
        self._check_params(message)
        roots = self.roots
        sizes, sums = read_sizes(message, 1, self.plan)
        load_ciphertexts(sizes, sums, self.plan, self.keyring.io)  # SEAL's checks first
        self._sums = _read_all(sizes, sums)
        total = np.stack([ct.data for ct in self._sums])
        where = spotcheck.positions(self.round, self.plan.params_id, roots, total)
        leaves = spotcheck.blocks(total).shape[0]
        each = len(where) * (8 * spotcheck.BLOCK + merkle.depth(leaves) * HASH_BYTES)
        blob = message.raw(3, length=each * len(roots))
        opened = [
            spotcheck.read_openings(blob[k * each : (k + 1) * each], roots[site], where, leaves)
            for k, site in enumerate(sorted(roots))
        ]
        spotcheck.check_sum(total, where, opened, self.keyring.keys.data_moduli)
        partials = self.keyring.partial(self.round, self._sums)
        return self._client_message(stage, [partials.reshape(-1)])

    def _signed_roots(self, message: wire.Message) -> dict[int, bytes]:
        """Every contributor's root, its signature checked; all sites, this one's its own."""
        sites = message.array(1, dtype="<u4").tolist()
        if sorted(sites) != list(self.roster.sites) or len(sites) != self.plan.n_clients:
            raise UnknownSender(
                f"threshold he decrypts only a sum of every site's ciphertexts; the server "
                f"lists {sorted(sites)}: refused"
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
        if roots[self.client_id] != self._root:
            raise ProtocolAbort("the server relayed another root under this site's name")
        return roots

    @handles(ThresholdStage.AGGREGATE)
    def _decode(self, stage: str, message: wire.Message) -> bytes:
        message.require_fields(2)
        self._check_params(message)
        moduli = self.keyring.keys.data_moduli
        shape = (len(self._sums), len(moduli), self.plan.poly_degree)
        raw = message.array(1, dtype="<u8", shape=(int(np.prod(shape)),)).reshape(shape)
        if (raw >= np.array(moduli, np.uint64)[None, :, None]).any():
            raise WrongShape("a combined partial is not reduced mod its prime")
        flat = np.empty((len(self._sums), self.plan.slots), np.uint64)
        for i, (ct, partial_sum) in enumerate(zip(self._sums, raw, strict=True)):
            plaintext = self.keyring.decrypt_combined(ct, partial_sum)
            flat[i] = self.keyring.encoder.decode_uint64(plaintext)
        self.aggregate = self._decode_slots(flat, self.plan.n_clients)
        return self._client_message(stage, [])


class ThresholdServer(HEServer):
    """Server side of a threshold round: relays commitments, adds the ciphertexts, opens the
    committed trees at the sum's spot-check positions, and adds the partial decryptions."""

    protocol_id = THRESHOLD_ID
    stages = THRESHOLD_STAGES

    def __init__(self, *, roster: Roster, **kwargs) -> None:
        super().__init__(**kwargs)
        check_instance("roster", roster, Roster, "Roster.enrol or Roster.load")
        if sorted(self.clients) != list(roster.sites):
            raise ValueError("threshold he: every round is over exactly the roster's sites")
        self.roster = roster
        self.roots: dict[int, bytes] = {}
        self.signatures: dict[int, bytes] = {}
        self.trees: dict[int, tuple[np.ndarray, list]] = {}
        self.partials: np.ndarray | None = None
        self.moduli: list[int] = []

    def describe(self) -> dict:
        return {**super().describe(), "keys": "threshold", "flood_bits": self.plan.flood_bits}

    def _max_message_bytes(self, stage: str) -> int:
        if stage == ThresholdStage.DECRYPT:
            return 256 + self.plan.n_ciphertexts * self.plan.max_ciphertext_bytes
        if stage == ThresholdStage.COMMIT:
            return 256 + HASH_BYTES + SIGNATURE_BYTES
        return super()._max_message_bytes(stage)

    @closes(ThresholdStage.COMMIT, ThresholdStage.INPUT, ThresholdStage.DECRYPT)
    def _check_everyone(self, stage: str) -> None:
        if self.alive != set(self.clients):
            missing = sorted(set(self.clients) - self.alive)
            self._closer()
            raise ProtocolAbort(
                f"round {self.round}: threshold he needs every site (n-of-n); {missing} "
                f"missing at {stage}"
            )

    @broadcasts(ThresholdStage.COMMIT)
    def _ask_for_commitments(self, stage: str) -> dict[int, bytes]:
        return dict.fromkeys(sorted(self.alive), self._server_message(stage, [self.plan.params_id]))

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
        self._start_parts()
        sites = sorted(self.roots)
        fields = [
            self.plan.params_id, np.array(sites, np.uint32),
            b"".join(self.roots[c] for c in sites), b"".join(self.signatures[c] for c in sites),
        ]  # fmt: skip
        return dict.fromkeys(sorted(self.alive), self._server_message(stage, fields))

    @receives(ThresholdStage.INPUT)
    def _take_ciphertexts(self, stage: str, sender: int, message: wire.Message) -> None:
        message.require_fields(3)
        sizes, blob = read_sizes(message, 1, self.plan)
        coefficients = _coefficients(sizes, blob)
        levels = spotcheck.commit(coefficients)
        if levels[-1][0] != self.roots[sender]:
            raise WrongShape(f"client {sender}'s ciphertexts are not the ones it committed to")
        self._take_input(stage, sender, message)  # parsed by SEAL and added
        self.trees[sender] = (coefficients, levels)

    @broadcasts(ThresholdStage.DECRYPT)
    def _send_sum(self, stage: str) -> dict[int, bytes]:
        sizes, sums = self._collect_sums()
        total = _coefficients(sizes, sums)
        sites = sorted(self.contributors)
        where = spotcheck.positions(self.round, self.plan.params_id, self.roots, total)
        openings = b"".join(spotcheck.open_blocks(*self.trees[c], where) for c in sites)
        self.trees.clear()
        self.moduli = [int(q) for q in _moduli(self.plan)]
        fields = [self.plan.params_id, sizes, sums, openings]
        self.partials = np.zeros((len(sizes), len(self.moduli), self.plan.poly_degree), np.uint64)
        return dict.fromkeys(sorted(self.alive), self._server_message(stage, fields))

    @receives(ThresholdStage.DECRYPT)
    def _take_partial(self, stage: str, sender: int, message: wire.Message) -> None:
        message.require_fields(1)
        shape = self.partials.shape
        raw = message.array(0, dtype="<u8", shape=(int(np.prod(shape)),)).reshape(shape)
        q = np.array(self.moduli, np.uint64)[None, :, None]
        if (raw >= q).any():
            raise WrongShape(f"client {sender}'s partial decryption is not reduced mod q")
        self.partials = (self.partials + raw) % q

    @broadcasts(ThresholdStage.AGGREGATE)
    def _send_partials(self, stage: str) -> dict[int, bytes]:
        fields = [self.plan.params_id, self.partials.reshape(-1)]
        return dict.fromkeys(sorted(self.alive), self._server_message(stage, fields))

    @receives(ThresholdStage.AGGREGATE)
    def _take_receipt_of_sum(self, stage: str, sender: int, message: wire.Message) -> None:
        message.require_fields(0)

    @closes(ThresholdStage.AGGREGATE)
    def _close_round(self, stage: str) -> None:
        self._check_receipts(stage)


def _moduli(plan) -> list[int]:
    context = plan.context()
    return [m.value() for m in context.first_context_data().parms().coeff_modulus()]
