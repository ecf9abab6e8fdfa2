"""The SecAgg+ server session. The protocol, its threat model and the legend from the paper's
notation to these names: :mod:`fedshield.protocols.secagg`.
"""

from __future__ import annotations

import hashlib

import numpy as np

from fedshield import wire
from fedshield._validate import check_instance
from fedshield.crypto import merkle, ring, shamir
from fedshield.crypto.identity import SIGNATURE_BYTES
from fedshield.crypto.keys import PUBLIC_KEY_BYTES, validate_public_key
from fedshield.crypto.prg import SEED_BYTES, ring_dtype
from fedshield.errors import (
    ConfigError,
    InvalidShare,
    ProtocolAbort,
    SecAggAbort,
    UnknownSender,
    WrongShape,
)
from fedshield.protocols.base import Revealed, ServerSession, broadcasts, closes, receives
from fedshield.protocols.ranges import TensorRanges
from fedshield.protocols.roster import Roster
from fedshield.protocols.secagg.channels import SEALED_SHARE_BYTES, receive_leaves
from fedshield.protocols.secagg.common import (
    ADVERTISE_LABEL,
    CONSISTENCY_LABEL,
    MAX_CLIENT_ID,
    PROTOCOL_ID,
    STAGES,
    SecAggStage,
    advertisement,
    graph_seed,
    ids,
    session_binding,
    survivor_statement,
)
from fedshield.protocols.secagg.config import SecAggConfig, neighbour_graph
from fedshield.protocols.secagg.dealing import (
    COMMITMENTS_BYTES,
    Dealt,
    Secret,
    opens,
    relayed_fields,
    verified_deals,
)
from fedshield.protocols.secagg.expulsion import proofs_for, require_neighbours
from fedshield.protocols.secagg.judge import check_complaints, check_unusable_claims
from fedshield.protocols.secagg.recovery import masked_with, recover_secrets, remove_masks

__all__ = ["SecAggServer"]


class SecAggServer(ServerSession):
    """Server side: relays keys and shares, sums masked inputs, removes the masks it may.

    Args:
        round, clients, dim: as for every :class:`~fedshield.protocols.base.ServerSession`.
        config: the round's :class:`SecAggConfig` (each client checks it is the same).
        roster: the federation's roster: ``clients`` must be members, and no stage goes on
            with fewer than its ``min_sites``; round keys (with the root over the receive
            keys), deals and consistency signatures are checked on arrival, a blob's
            contents only when a client complains (:mod:`~fedshield.protocols.secagg.judge`).
        ranges: the round's per-tensor ranges when ``config.clip`` is ``None``; their summed
            statistic is revealed as :attr:`Revealed.range_counts`.
    """

    protocol_id = PROTOCOL_ID
    stages = STAGES
    large_payloads = True  # masked inputs are read in place

    def __init__(
        self, *, round: int, clients, dim: int, config: SecAggConfig, roster: Roster,
        ranges: TensorRanges | None = None,
    ) -> None:  # fmt: skip
        super().__init__(round=round, clients=clients, dim=dim)
        check_instance("config", config, SecAggConfig)
        check_instance("roster", roster, Roster, "Roster.enrol or Roster.load")
        strangers = sorted(set(self.clients) - set(roster.sites))
        if strangers or max(self.clients) > MAX_CLIENT_ID:
            raise ConfigError(f"clients must be on the federation's roster (not: {strangers}), "
                             f"with ids up to {MAX_CLIENT_ID} (Shamir points)")  # fmt: skip
        n = len(self.clients)
        self.config, self.roster, self.ranges = config, roster, ranges
        self.grid = config.grid(ranges)
        if ranges is not None:
            ranges.check_covers(dim)
        self.params = config.digest(ranges)  # bound into every pairwise mask
        self.session = session_binding(self.params, self.clients)  # in every signature
        self.graph_seed = self.run_binding = b""  # from the advertised keys, at share_keys
        # the update, the weight's digits (and a count), the range statistic
        self.length = dim + config.tail_values + self.grid.stat_values
        self.bits = config.bits(n)
        self.threshold = config.threshold_for(n)
        self.degree = config.degree(n)  # neighbours per client
        self.quorum = config.quorum(n)  # consistency signatures every unmasking client needs
        self.graph: dict[int, tuple[int, ...]] = {}
        self.channel_public_keys: dict[int, bytes] = {}  # c_u^PK
        self.mask_public_keys: dict[int, bytes] = {}  # s_u^PK
        self.key_signatures: dict[int, tuple[bytes, bytes]] = {}  # (signature, receive root)
        self.consistency_signatures: dict[int, bytes] = {}  # U_4: signer -> signature on U_3
        # holder -> sender -> (sealed shares, what proves the sender dealt them)
        self.mailbox: dict[int, dict[int, tuple[bytes, Dealt]]] = {}
        self.receive_keys: dict[int, dict[int, bytes]] = {}  # holder -> sender -> its key
        self.receive_trees: dict[int, list[list[bytes]]] = {}  # holder -> its Merkle tree
        self.unusable: set[int] = set()  # clients whose receive key a sender proved unusable
        self.masked: dict[int, memoryview] = {}  # packed masked inputs, already in masked_sum
        self.masked_sum = np.zeros(self.length, dtype=ring_dtype(self.bits))
        self.complaints: dict[int, set[int]] = {}  # complainer -> senders of bad shares
        self.shared_keys_survivors: tuple[int, ...] = ()  # U_2
        self.masked_input_survivors: tuple[int, ...] = ()  # U_3
        self.self_mask_seed_shares: dict[int, list[shamir.Share]] = {}  # owner -> shares of b
        self.mask_key_shares: dict[int, list[shamir.Share]] = {}  # owner -> shares of s^SK
        self.commitments: dict[int, bytes] = {}  # client -> hash of its self-mask seed
        self.seeds: dict[int, bytes] = {}  # survivor -> its rebuilt self-mask seed
        self.dropped_mask_keys: dict = {}  # dropped client -> its rebuilt mask key pair
        self.cheaters: dict[int, str] = {}  # dealer -> the secret its shares do not decode to
        self.bad_dealers: set[int] = set()  # dealt committed shares off its polynomial
        self.unkeyed: set[int] = set()  # masks leave the sum by pairwise seeds at expel
        self.pair_seeds: dict[tuple[int, int], bytes] = {}  # (survivor, unkeyed) -> seed
        self.unmasked: np.ndarray | None = None  # the revealed integer sum
        # (owner, holder) of every revealed share that missed its commitment: the holder
        # forged it (or a server colluding with the owner relayed the holder a false one)
        self.inconsistent: set[tuple[int, int]] = set()

    def describe(self) -> dict:
        """Ring bits, Shamir threshold, neighbours per client and weighting of this round, and
        after the reveal the SHA-256 of the unmasked integer sum (to compare runs bit for bit)."""
        digest = None
        if self.unmasked is not None:
            digest = hashlib.sha256(self.unmasked.astype("<u8").tobytes()).hexdigest()
        return {
            "ring_bits": self.bits,
            "threshold": self.threshold,
            "quorum": self.quorum,
            "neighbours": self.degree,
            "weighting": self.config.weighting,
            "aggregate_sha256": digest,
            "inconsistent_shares": [list(pair) for pair in sorted(self.inconsistent)],
            "cheaters": sorted(self.cheaters),
            "bad_dealers": sorted(self.bad_dealers),
        }

    def _packed_len(self) -> int:
        return ((self.length) * self.bits + 7) // 8

    def _max_message_bytes(self, stage: str) -> int:
        n = len(self.clients)
        if stage == SecAggStage.MASKED_INPUT:
            return 256 + (8 + PUBLIC_KEY_BYTES) * n + self._packed_len()
        return 256 + n * (8 + 2 * SEALED_SHARE_BYTES + 2 * shamir.SHARE_BYTES)

    def _to_all_alive(self, stage: str, fields: list) -> dict[int, bytes]:
        msg = self._server_message(stage, fields)
        return dict.fromkeys(sorted(self.alive), msg)

    # --- advertise_keys ----------------------------------------------------------------------
    @broadcasts(SecAggStage.ADVERTISE_KEYS)
    def _ask_for_keys(self, stage: str) -> dict[int, bytes]:
        return self._to_all_alive(stage, [self.params, ids(self.clients)])

    @receives(SecAggStage.ADVERTISE_KEYS)
    def _take_keys(self, stage: str, sender: int, message: wire.Message) -> None:
        message.require_fields(4)
        channel_public_key = message.raw(0, length=PUBLIC_KEY_BYTES)
        mask_public_key = message.raw(1, length=PUBLIC_KEY_BYTES)
        signature = message.raw(2, length=SIGNATURE_BYTES)
        validate_public_key(channel_public_key)
        validate_public_key(mask_public_key)
        publics = message.chunks(3, size=PUBLIC_KEY_BYTES, count=len(self.clients))
        levels = merkle.tree(receive_leaves(list(self.clients), publics))
        root = levels[-1][0]
        statement = advertisement(
            self.round, self.session, sender, channel_public_key, mask_public_key, root
        )
        self.roster.verify(sender, signature, ADVERTISE_LABEL, statement)
        if (
            channel_public_key == mask_public_key
            or channel_public_key in self.channel_public_keys.values()
            or mask_public_key in self.mask_public_keys.values()
        ):
            raise WrongShape(f"client {sender} reused a public key")
        self.channel_public_keys[sender] = channel_public_key
        self.mask_public_keys[sender] = mask_public_key
        self.key_signatures[sender] = (signature, root)
        self.receive_keys[sender] = dict(zip(self.clients, publics, strict=True))
        self.receive_trees[sender] = levels

    # --- share_keys --------------------------------------------------------------------------
    @broadcasts(SecAggStage.SHARE_KEYS)
    def _relay_keys(self, stage: str) -> dict[int, bytes]:
        advertised = sorted(self.alive)  # U_1
        channel = {c: self.channel_public_keys[c] for c in advertised}
        mask = {c: self.mask_public_keys[c] for c in advertised}
        self.graph_seed = graph_seed(self.round, self.session, channel, mask)
        self.run_binding = self.session + self.graph_seed  # this run only: fresh keys in it
        self.graph = neighbour_graph(advertised, self.degree, self.graph_seed)
        signed = [self.key_signatures[c] for c in advertised]
        keys = [ids(advertised), b"".join(channel.values()), b"".join(mask.values()),
                *(b"".join(part) for part in zip(*signed, strict=True))]  # fmt: skip
        out = {}
        for c in advertised:  # and the receive keys c's holders made for it, with paths
            holders, at = sorted((*self.graph[c], c)), self.clients.index(c)
            keys_for_c = b"".join(self.receive_keys[h][c] for h in holders)
            paths = b"".join(merkle.path(self.receive_trees[h], at) for h in holders)
            out[c] = self._server_message(stage, [*keys, keys_for_c, paths])
        return out

    @receives(SecAggStage.SHARE_KEYS)
    def _take_sealed_shares(self, stage: str, sender: int, message: wire.Message) -> None:
        """The sender's sealed shares and its signature on what it dealt (checked now: a
        proof against a cheater rests on it); the holders whose receive keys it found
        unusable: a true claim drops the holder at the stage's close, a false one the sender
        now."""
        message.require_fields(6)
        holders = [j for j in (*self.graph[sender], sender) if j in self.channel_public_keys]
        unusable = message.array(4, dtype="<u4").tolist()
        check_unusable_claims(self, sender, unusable, holders)  # true: dropped at the close
        holders = sorted(j for j in holders if j not in unusable)
        if len(holders) < self.threshold:  # its secrets could never be rebuilt
            raise UnknownSender(f"client {sender} sealed to fewer than t usable holders")
        if message.array(0, dtype="<u4").tolist() != holders:
            raise UnknownSender(f"client {sender} addressed shares outside its neighbours")
        sealed = message.chunks(1, size=SEALED_SHARE_BYTES, count=len(holders))
        deals = verified_deals(
            self.roster, round=self.round, session=self.run_binding, sender=sender,
            holders=holders, sealed=sealed, seed_commitment=message.raw(2, length=32),
            commitments=message.chunks(5, size=COMMITMENTS_BYTES, count=len(holders)),
            signature=message.raw(3, length=SIGNATURE_BYTES),
        )  # fmt: skip
        for h, blob, dealt in zip(holders, sealed, deals, strict=True):
            self.mailbox.setdefault(h, {})[sender] = (blob, dealt)
        self.commitments[sender] = deals[0].seed_commitment

    @closes(SecAggStage.SHARE_KEYS)
    def _drop_unusable(self, stage: str) -> None:
        """A client that signed an unusable receive key counts as dropped: nobody sealed
        shares to it with that key, so it cannot hold them."""
        self.alive -= self.unusable
        self._check_threshold(stage)

    # --- masked_input ------------------------------------------------------------------------
    @broadcasts(SecAggStage.MASKED_INPUT)
    def _relay_shares(self, stage: str) -> dict[int, bytes]:
        self.shared_keys_survivors = tuple(sorted(self.alive))
        out = {}
        for c in self.shared_keys_survivors:
            inbox = {s: m for s, m in self.mailbox.get(c, {}).items() if s in self.alive}
            deals = [inbox[s] for s in sorted(inbox)]
            out[c] = self._server_message(
                stage, [ids(self.shared_keys_survivors), ids(inbox), *relayed_fields(deals)]
            )
        return out

    @receives(SecAggStage.MASKED_INPUT)
    def _take_masked_input(self, stage: str, sender: int, message: wire.Message) -> None:
        message.require_fields(4)
        complaints = check_complaints(self, sender, message)
        packed = message.view(3, length=self._packed_len())  # no copy (large_payloads)
        ring.unpack_add(packed, self.length, self.bits, self.masked_sum)
        self.masked[sender] = packed
        self.complaints[sender] = complaints

    @closes(SecAggStage.MASKED_INPUT)
    def _drop_accused(self, stage: str) -> None:
        """A client whose shares were proven bad at a neighbour counts as dropped."""
        accused = set().union(*self.complaints.values())
        self.alive -= accused
        for c in accused & set(self.masked):
            self.masked_sum -= ring.unpack(self.masked.pop(c), self.length, self.bits)
        self._check_threshold(stage)

    # --- consistency -------------------------------------------------------------------------
    @broadcasts(SecAggStage.CONSISTENCY)
    def _announce_survivors(self, stage: str) -> dict[int, bytes]:
        self.masked_input_survivors = tuple(sorted(self.alive))  # U_3
        return self._to_all_alive(stage, [ids(self.masked_input_survivors)])

    @receives(SecAggStage.CONSISTENCY)
    def _take_consistency_signature(self, stage: str, sender: int, message: wire.Message):
        message.require_fields(1)
        signature = message.raw(0, length=SIGNATURE_BYTES)
        statement = survivor_statement(self.round, self.run_binding, self.masked_input_survivors)
        self.roster.verify(sender, signature, CONSISTENCY_LABEL, statement)
        self.consistency_signatures[sender] = signature

    @closes(SecAggStage.CONSISTENCY)
    def _check_quorum(self, stage: str) -> None:
        if len(self.consistency_signatures) < self.quorum:
            raise SecAggAbort(
                f"round {self.round}: {len(self.consistency_signatures)} sites signed the "
                f"survivor set, the quorum is {self.quorum}"
            )
        self._check_threshold(stage)

    # --- unmask ------------------------------------------------------------------------------
    @broadcasts(SecAggStage.UNMASK)
    def _ask_for_shares(self, stage: str) -> dict[int, bytes]:
        signers = sorted(self.consistency_signatures)
        signatures = b"".join(self.consistency_signatures[c] for c in signers)
        return self._to_all_alive(stage, [ids(signers), signatures])

    @receives(SecAggStage.UNMASK)
    def _take_shares(self, stage: str, sender: int, message: wire.Message) -> None:
        """Shares of the survivors' seeds and the dropped clients' keys; one that is not what
        its dealer dealt this holder (point, threshold, signed commitment) is forged: it is
        dropped and recorded. Both fields are checked before any share is kept."""
        message.require_fields(4)
        dropped = set(self.shared_keys_survivors) - set(self.masked_input_survivors)
        own_group = {*self.graph[sender], sender}
        revealed = []
        for ids_field, secret, allowed in (
            (0, Secret.SEED, set(self.masked_input_survivors)),
            (2, Secret.KEY, dropped),
        ):
            owners = message.array(ids_field, dtype="<u4").tolist()
            blobs = message.chunks(ids_field + 1, size=shamir.SHARE_BYTES, count=len(owners))
            if len(set(owners)) != len(owners) or not set(owners) <= allowed & own_group:
                raise InvalidShare(f"client {sender} revealed shares it must not reveal")
            revealed += [(secret, owner, shamir.Share.from_bytes(blob))
                         for owner, blob in zip(owners, blobs, strict=True)]  # fmt: skip
        stores = {Secret.SEED: self.self_mask_seed_shares, Secret.KEY: self.mask_key_shares}
        for secret, owner, share in revealed:
            commitment = self.mailbox[sender][owner][1].commitment(secret)
            if opens(share, commitment, round=self.round, owner=owner, holder=sender,
                     secret=secret, threshold=self.threshold):  # fmt: skip
                stores[secret].setdefault(owner, []).append(share)
            else:
                self.inconsistent.add((owner, sender))

    @closes(SecAggStage.UNMASK)
    def _rebuild_secrets(self, stage: str) -> None:
        """Rebuild the secrets; the survivors left without cheaters must still be enough."""
        self._check_threshold(stage)
        try:
            recover_secrets(self)
        except SecAggAbort as exc:
            raise SecAggAbort(f"round {self.round}: cannot unmask ({exc})") from None
        self._check_threshold(stage)

    # --- expel -------------------------------------------------------------------------------
    @broadcasts(SecAggStage.EXPEL)
    def _ask_for_pair_seeds(self, stage: str) -> dict[int, bytes]:
        """Nobody, unless a dealer was proven to cheat or a dropped client's mask key cannot
        be rebuilt (:mod:`.expulsion`); the round aborts first if a survivor that masked with
        one already left (its mask could never leave the sum)."""
        require_neighbours(self, stage)
        return {c: self._server_message(stage, f) for c, f in proofs_for(self).items()}

    @receives(SecAggStage.EXPEL)
    def _take_pair_seeds(self, stage: str, sender: int, message: wire.Message) -> None:
        message.require_fields(2)
        peers = message.array(0, dtype="<u4").tolist()
        asked = [u for u in sorted(self.unkeyed) if sender in masked_with(self, u)]
        if peers != asked:
            raise UnknownSender(f"client {sender} revealed seeds with {peers}, not {asked}")
        seeds = message.chunks(1, size=SEED_BYTES, count=len(asked))
        self.pair_seeds.update(((sender, u), seed) for u, seed in zip(peers, seeds, strict=True))

    @closes(SecAggStage.EXPEL)
    def _check_pair_seeds(self, stage: str) -> None:
        require_neighbours(self, stage)  # every survivor asked revealed its seeds

    @closes(SecAggStage.ADVERTISE_KEYS)
    def _check_threshold(self, stage: str) -> None:
        pinned = max(self.config.min_clients, self.roster.min_sites)  # as every client pins
        if len(self.alive) < max(self.threshold, pinned):
            raise SecAggAbort(
                f"round {self.round}: {len(self.alive)} clients left after '{stage}', "
                f"the threshold is {self.threshold} and the pinned minimum {pinned}"
            )

    # --- reveal ------------------------------------------------------------------------------
    def _reveal(self) -> Revealed:
        survivors = sorted(self.masked)
        total = self.masked_sum
        try:
            remove_masks(self, total)
        except (ProtocolAbort, InvalidShare, WrongShape) as exc:
            raise SecAggAbort(f"round {self.round}: cannot unmask ({exc})") from exc
        total &= total.dtype.type((1 << self.bits) - 1)
        self.unmasked = total  # the summed levels and tail values: all the server learns
        try:
            weighted_sum, weight, counts = self.grid.decode_checked(
                total, len(survivors), config=self.config, dim=self.dim, ranges=self.ranges
            )
        except ValueError as exc:
            raise SecAggAbort(f"round {self.round}: {exc}") from None
        return Revealed(
            contributors=tuple(survivors),
            weighted_sum=weighted_sum,
            total_weight=float(weight),
            dropped=tuple(c for c in self.clients if c not in self.masked),
            range_counts=counts,
        )
