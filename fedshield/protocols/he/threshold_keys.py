"""Threshold ``he``'s collective key: every site makes a key share, and the public key is the
sum of their public shares. No one, server or site, ever holds the secret key.

Building block: use ``he`` with ``keys="threshold"`` (:mod:`fedshield.protocols.he`) unless you
know why not; the arithmetic is :mod:`fedshield.crypto.threshold`.

Commit, confirm, then reveal: each site first sends the SHA-256 of its public share, signed by
its identity on the federation's :class:`~fedshield.protocols.roster.Roster`. The server relays
every signed commitment; each site checks them and signs the list it saw. Only once every
site's signature over the same list is in does a site reveal its share. A site that reveals
last therefore cannot choose its share to cancel the others' (a share ``p_m = x - sum p_i``
would give the server a key of its own), and the server cannot show different sites different
commitments (an accomplice committing twice, once after an honest share is out). Every site
checks every share against its commitment (and that it is reduced mod each prime) and
computes the collective key itself; its answer to ``install`` is the key's hash, which the
server compares across sites.

With its share each site reveals, sealed to each other site, a Shamir share of its secret
share (:mod:`.threshold_keyring`; the commitment carries the X25519 key that seals them), so
any ``threshold`` sites decrypt later. The setup itself needs every site: the list must be
exactly the roster's sites, and a site missing at any stage aborts it.

Stages (:class:`~fedshield.protocols.he.common.ThresholdKeyStage`): ``commit_share`` →
``confirm_shares`` → ``reveal_share`` → ``install_key``.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

from fedshield import wire
from fedshield._validate import check_instance
from fedshield.crypto.identity import SIGNATURE_BYTES, Identity
from fedshield.crypto.keys import KeyPair, validate_public_key
from fedshield.crypto.seal import SealIO
from fedshield.crypto.threshold import ThresholdKeys, sum_public_shares
from fedshield.errors import InvalidShare, ProtocolAbort, UnknownSender, WrongShape
from fedshield.protocols.base import (
    ClientSession,
    Revealed,
    ServerSession,
    broadcasts,
    closes,
    handles,
    receives,
)
from fedshield.protocols.he.common import (
    SHARE_COMMIT_LABEL,
    SHARE_LIST_LABEL,
    THRESHOLD_KEY_ID,
    THRESHOLD_KEY_STAGES,
    ThresholdKeyStage,
)
from fedshield.protocols.he.params import HEPlan
from fedshield.protocols.he.threshold_keyring import (
    ThresholdKeyring,
    open_shamir,
    seal_shamir,
    sealed_share_bytes,
    shamir_shares,
)
from fedshield.protocols.roster import Roster

__all__ = ["ThresholdKeySetupClient", "ThresholdKeySetupServer", "ThresholdKeyring"]


def _statement(round: int, params_id: bytes, site: int, digest: bytes) -> bytes:
    return struct.pack("<II", round, site) + params_id + digest


def _list_statement(round: int, params_id: bytes, site: int, digests: dict) -> bytes:
    """What a site signs at ``confirm_shares``: the list of commitments it saw."""
    listed = b"".join(struct.pack("<I", c) + digests[c] for c in sorted(digests))
    return struct.pack("<II", round, site) + params_id + hashlib.sha256(listed).digest()


COMMITMENT_BYTES = 64  # the SHA-256 of a site's public share, then its X25519 transport key


def _share_bytes(plan: HEPlan) -> int:
    return len(plan.coeff_bits) * plan.poly_degree * 8


class ThresholdKeySetupServer(ServerSession):
    """Server side of the collective key generation: relays commitments and shares, and
    checks that every site installed the same key. It learns public shares only."""

    protocol_id = THRESHOLD_KEY_ID
    stages = THRESHOLD_KEY_STAGES

    def __init__(self, *, round: int, clients, dim: int, plan: HEPlan, roster: Roster) -> None:
        super().__init__(round=round, clients=clients, dim=dim)
        check_instance("plan", plan, HEPlan, "from plan_for")
        check_instance("roster", roster, Roster, "Roster.enrol or Roster.load")
        if sorted(self.clients) != sorted(roster.sites) or len(self.clients) != plan.n_clients:
            raise ValueError("threshold keys: the clients must be exactly the roster's sites")
        self.plan, self.roster = plan, roster
        self.digests: dict[int, bytes] = {}
        self.signatures: dict[int, bytes] = {}
        self.confirmations: dict[int, bytes] = {}
        self.shares: dict[int, bytes] = {}
        self.sealed: dict[tuple[int, int], bytes] = {}  # (sender, receiver): a Shamir share
        self.key_digests: dict[int, bytes] = {}

    def _max_message_bytes(self, stage: str) -> int:
        n = len(self.clients)
        return 256 + _share_bytes(self.plan) + n * (8 + sealed_share_bytes(self.plan))

    def _everyone(self, stage: str) -> None:
        if self.alive != set(self.clients):
            missing = sorted(set(self.clients) - self.alive)
            raise ProtocolAbort(f"threshold keys need every site; {missing} missing at {stage}")

    @broadcasts(ThresholdKeyStage.COMMIT)
    def _ask_for_commitments(self, stage: str) -> dict[int, bytes]:
        return dict.fromkeys(sorted(self.alive), self._server_message(stage, [self.plan.params_id]))

    @receives(ThresholdKeyStage.COMMIT)
    def _take_commitment(self, stage: str, sender: int, message: wire.Message) -> None:
        message.require_fields(2)
        commitment = message.raw(0, length=COMMITMENT_BYTES)
        validate_public_key(commitment[32:])
        signature = message.raw(1, length=SIGNATURE_BYTES)
        statement = _statement(self.round, self.plan.params_id, sender, commitment)
        self.roster.verify(sender, signature, SHARE_COMMIT_LABEL, statement)
        self.digests[sender], self.signatures[sender] = commitment, signature

    @closes(ThresholdKeyStage.COMMIT, ThresholdKeyStage.CONFIRM, ThresholdKeyStage.REVEAL)
    def _check_everyone(self, stage: str) -> None:
        self._everyone(stage)

    @broadcasts(ThresholdKeyStage.CONFIRM)
    def _relay_commitments(self, stage: str) -> dict[int, bytes]:
        sites = sorted(self.digests)
        fields = [np.array(sites, np.uint32), b"".join(self.digests[c] for c in sites),
                  b"".join(self.signatures[c] for c in sites)]  # fmt: skip
        return dict.fromkeys(sorted(self.alive), self._server_message(stage, fields))

    @receives(ThresholdKeyStage.CONFIRM)
    def _take_confirmation(self, stage: str, sender: int, message: wire.Message) -> None:
        message.require_fields(1)
        signature = message.raw(0, length=SIGNATURE_BYTES)
        statement = _list_statement(self.round, self.plan.params_id, sender, self.digests)
        self.roster.verify(sender, signature, SHARE_LIST_LABEL, statement)
        self.confirmations[sender] = signature

    @broadcasts(ThresholdKeyStage.REVEAL)
    def _relay_confirmations(self, stage: str) -> dict[int, bytes]:
        sites = sorted(self.confirmations)
        fields = [np.array(sites, np.uint32), b"".join(self.confirmations[c] for c in sites)]
        return dict.fromkeys(sorted(self.alive), self._server_message(stage, fields))

    @receives(ThresholdKeyStage.REVEAL)
    def _take_share(self, stage: str, sender: int, message: wire.Message) -> None:
        message.require_fields(2)
        share = message.raw(0, length=_share_bytes(self.plan))
        if hashlib.sha256(share).digest() != self.digests[sender][:32]:
            raise WrongShape(f"client {sender}'s public share does not match its commitment")
        others = [c for c in sorted(self.clients) if c != sender]
        size = sealed_share_bytes(self.plan)
        blob = message.raw(1, length=size * len(others))
        self.shares[sender] = share
        for k, receiver in enumerate(others):
            self.sealed[(sender, receiver)] = blob[size * k : size * (k + 1)]

    @broadcasts(ThresholdKeyStage.INSTALL)
    def _relay_shares(self, stage: str) -> dict[int, bytes]:
        sites = sorted(self.shares)
        shares = [np.array(sites, np.uint32), b"".join(self.shares[c] for c in sites)]
        return {
            c: self._server_message(
                stage, [*shares, b"".join(self.sealed[(i, c)] for i in sites if i != c)]
            )
            for c in sorted(self.alive)
        }

    @receives(ThresholdKeyStage.INSTALL)
    def _take_key_digest(self, stage: str, sender: int, message: wire.Message) -> None:
        message.require_fields(1)
        self.key_digests[sender] = message.raw(0, length=32)

    @closes(ThresholdKeyStage.INSTALL)
    def _check_same_key(self, stage: str) -> None:
        self._everyone(stage)
        if len(set(self.key_digests.values())) != 1:
            raise ProtocolAbort("the sites computed different collective keys")

    def _reveal(self) -> Revealed:
        return Revealed(
            contributors=tuple(sorted(self.key_digests)), weighted_sum=None, total_weight=None,
            dropped=tuple(c for c in self.clients if c not in self.key_digests),
        )  # fmt: skip


class ThresholdKeySetupClient(ClientSession):
    """Site side of the collective key generation; after ``install_key``, :attr:`keyring`
    holds its :class:`ThresholdKeyring`.

    Args:
        client_id: this site's id.
        plan: the threshold HE parameters (the server's must be the same).
        roster: the federation: the key is shared among exactly its sites.
        identity: this site's identity key (its public half is on the roster).
        round: the session's round (0 for a federation's one-time setup).
    """

    protocol_id = THRESHOLD_KEY_ID
    stages = THRESHOLD_KEY_STAGES

    def __init__(
        self, *, client_id: int, plan: HEPlan, roster: Roster, identity: Identity, round: int = 0
    ) -> None:
        super().__init__(
            client_id=client_id, round=round, update=np.zeros(1, np.float32), weight=1.0
        )
        check_instance("plan", plan, HEPlan, "from plan_for")
        check_instance("roster", roster, Roster, "Roster.enrol or Roster.load")
        check_instance("identity", identity, Identity)
        if plan.config.keys != "threshold":
            raise ValueError("plan: these parameters are not for threshold keys")
        roster.check_identity(client_id, identity.public_bytes)
        self.plan, self.roster, self.identity = plan, roster, identity
        io = SealIO(plan.context())
        self.keys = ThresholdKeys(io, seed=plan.params_id, flood_bits=plan.flood_bits)
        self.share = np.ascontiguousarray(self.keys.public_share(), "<u8").tobytes()
        self.transport = KeyPair.generate()  # seals this site's Shamir shares to each site
        self.digests: dict[int, bytes] = {}
        self.keyring: ThresholdKeyring | None = None
        self._own_shamir: np.ndarray | None = None

    def _check_params(self, message: wire.Message) -> None:
        if message.raw(0, length=32) != self.plan.params_id:
            raise WrongShape("the server's HE parameters differ from this site's")

    def _sites(self, message: wire.Message) -> list[int]:
        sites = message.array(0, dtype="<u4").tolist()
        if sorted(sites) != list(self.roster.sites) or len(sites) != self.plan.n_clients:
            raise UnknownSender(
                f"threshold keys are shared by exactly the roster's sites; the server lists "
                f"{sorted(sites)}: refused"
            )
        return sites

    @handles(ThresholdKeyStage.COMMIT)
    def _commit(self, stage: str, message: wire.Message) -> bytes:
        message.require_fields(1)
        self._check_params(message)
        commitment = hashlib.sha256(self.share).digest() + self.transport.public_bytes
        statement = _statement(self.round, self.plan.params_id, self.client_id, commitment)
        signature = self.roster.sign(self.identity, SHARE_COMMIT_LABEL, statement)
        return self._client_message(stage, [commitment, signature])

    @handles(ThresholdKeyStage.CONFIRM)
    def _confirm(self, stage: str, message: wire.Message) -> bytes:
        message.require_fields(3)
        sites = self._sites(message)
        commitments = message.raw(1, length=COMMITMENT_BYTES * len(sites))
        signatures = message.raw(2, length=SIGNATURE_BYTES * len(sites))
        for k, site in enumerate(sites):
            commitment = commitments[COMMITMENT_BYTES * k : COMMITMENT_BYTES * (k + 1)]
            validate_public_key(commitment[32:])
            statement = _statement(self.round, self.plan.params_id, site, commitment)
            signature = signatures[SIGNATURE_BYTES * k : SIGNATURE_BYTES * (k + 1)]
            self.roster.verify(site, signature, SHARE_COMMIT_LABEL, statement)
            self.digests[site] = commitment
        mine = hashlib.sha256(self.share).digest() + self.transport.public_bytes
        if self.digests[self.client_id] != mine:
            raise InvalidShare("the server relayed another commitment under this site's name")
        statement = _list_statement(self.round, self.plan.params_id, self.client_id, self.digests)
        signature = self.roster.sign(self.identity, SHARE_LIST_LABEL, statement)
        return self._client_message(stage, [signature])

    @handles(ThresholdKeyStage.REVEAL)
    def _reveal_share(self, stage: str, message: wire.Message) -> bytes:
        """Reveal only once every site signed the list of commitments this site saw."""
        message.require_fields(2)
        sites = self._sites(message)
        signatures = message.raw(1, length=SIGNATURE_BYTES * len(sites))
        for k, site in enumerate(sites):
            statement = _list_statement(self.round, self.plan.params_id, site, self.digests)
            signature = signatures[SIGNATURE_BYTES * k : SIGNATURE_BYTES * (k + 1)]
            self.roster.verify(site, signature, SHARE_LIST_LABEL, statement)
        others = [c for c in sites if c != self.client_id]
        shares = shamir_shares(self.keys, self.plan.key_threshold, sites)
        self._own_shamir = shares[self.client_id]
        sealed = [
            seal_shamir(shares[c], self._pair_key(c, sender=self.client_id, receiver=c),
                        round=self.round, sender=self.client_id, receiver=c)
            for c in others
        ]  # fmt: skip
        return self._client_message(stage, [self.share, b"".join(sealed)])

    def _pair_key(self, other: int, *, sender: int, receiver: int) -> bytes:
        """The AEAD key between this site and ``other``, from their confirmed X25519 keys."""
        info = b"fedshield/he/threshold-shamir" + self.plan.params_id + struct.pack(
            "<II", sender, receiver)  # fmt: skip
        return self.transport.agree(self.digests[other][32:], info=info)

    @handles(ThresholdKeyStage.INSTALL)
    def _install(self, stage: str, message: wire.Message) -> bytes:
        message.require_fields(3)
        sites = self._sites(message)
        size = _share_bytes(self.plan)
        blob = message.raw(1, length=size * len(sites))
        shares = []
        for k, site in enumerate(sites):
            share = blob[size * k : size * (k + 1)]
            if hashlib.sha256(share).digest() != self.digests[site][:32]:
                raise InvalidShare(f"site {site}'s public share does not match its commitment")
            values = np.frombuffer(share, "<u8").reshape(-1, self.plan.poly_degree)
            if (values >= np.array(self.keys.key_moduli, np.uint64)[:, None]).any():
                raise InvalidShare(f"site {site}'s public share is not reduced mod its primes")
            shares.append(values)
        self.keys.install(shares)
        shamir = self._shamir_total(sites, message)
        self.keyring = ThresholdKeyring(self.plan, self.keys, shamir, site=self.client_id)
        digest = hashlib.sha256(self.keys.public_key_bytes()).digest()
        return self._client_message(stage, [digest])

    def _shamir_total(self, sites: list[int], message: wire.Message) -> np.ndarray:
        """This site's Shamir share of the collective key: its own, plus each other site's
        sealed to it (AES-GCM under their confirmed X25519 keys: the server reads none)."""
        others = [c for c in sites if c != self.client_id]
        size = sealed_share_bytes(self.plan)
        blob = message.raw(2, length=size * len(others))
        parts = [self._own_shamir]
        for k, sender in enumerate(others):
            key = self._pair_key(sender, sender=sender, receiver=self.client_id)
            parts.append(
                open_shamir(
                    blob[size * k : size * (k + 1)],
                    key,
                    self.keys,
                    round=self.round,
                    sender=sender,
                    receiver=self.client_id,
                )
            )
        return sum_public_shares(parts, self.keys.data_moduli)
