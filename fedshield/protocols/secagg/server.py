"""The SecAgg+ server session. The protocol, its threat model and the legend from the paper's
notation to these names: :mod:`fedshield.protocols.secagg`.
"""

from __future__ import annotations

import hashlib

import numpy as np

from fedshield import wire
from fedshield._validate import check_instance
from fedshield.crypto import ring, shamir
from fedshield.crypto.identity import SIGNATURE_BYTES
from fedshield.crypto.keys import PUBLIC_KEY_BYTES, validate_public_key
from fedshield.crypto.prg import SEED_BYTES, ring_dtype
from fedshield.errors import (
    ConfigError,
    FalseComplaint,
    InvalidShare,
    ProtocolAbort,
    SecAggAbort,
    UnknownSender,
    WrongShape,
)
from fedshield.protocols.base import Revealed, ServerSession, broadcasts, closes, receives
from fedshield.protocols.ranges import TensorRanges
from fedshield.protocols.roster import Roster
from fedshield.protocols.secagg.channels import (
    SEALED_SHARE_BYTES,
    blob_signed,
    complaint_holds,
    receive_key_usable,
)
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
from fedshield.protocols.secagg.recovery import remove_masks

__all__ = ["SecAggServer"]


class SecAggServer(ServerSession):
    """Server side: relays keys and shares, sums masked inputs, removes the masks it may.

    Args:
        round, clients, dim: as for every :class:`~fedshield.protocols.base.ServerSession`.
        config: the round's :class:`SecAggConfig` (each client checks it is the same).
        roster: the federation's roster: ``clients`` must be members, and no stage goes on
            with fewer than its ``min_sites``; round keys and consistency signatures are
            checked on arrival, receive keys and sealed blobs only when a client reports one
            (:mod:`~fedshield.protocols.secagg.channels`).
        ranges: the round's per-tensor ranges when ``config.clip`` is ``None``; their summed
            statistic is revealed as :attr:`Revealed.range_counts`.
    """

    protocol_id = PROTOCOL_ID
    stages = STAGES

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
        self.key_signatures: dict[int, bytes] = {}  # each client's signature on its keys
        self.consistency_signatures: dict[int, bytes] = {}  # U_4: signer -> signature on U_3
        # receiver -> sender -> (sealed shares, the sender's signature on them)
        self.mailbox: dict[int, dict[int, tuple[bytes, bytes]]] = {}
        # holder -> sender -> (the receive key the holder made for the sender, its signature)
        self.receive_keys: dict[int, dict[int, tuple[bytes, bytes]]] = {}
        self.unusable: set[int] = set()  # clients whose receive key a sender proved unusable
        self.masked: dict[int, bytes] = {}  # packed masked inputs, already in masked_sum
        self.masked_sum = np.zeros(self.length, dtype=ring_dtype(self.bits))
        self.complaints: dict[int, set[int]] = {}  # complainer -> senders of bad shares
        self.shared_keys_survivors: tuple[int, ...] = ()  # U_2
        self.masked_input_survivors: tuple[int, ...] = ()  # U_3
        self.self_mask_seed_shares: dict[int, list[shamir.Share]] = {}  # owner -> shares of b
        self.mask_key_shares: dict[int, list[shamir.Share]] = {}  # owner -> shares of s^SK
        self.commitments: dict[int, bytes] = {}  # client -> hash of its self-mask seed
        self.unmasked: np.ndarray | None = None  # the revealed integer sum
        # (owner, holder) of every share that disagreed with the decoded secret: the holder
        # forged it, or the owner dealt it wrong (only verifiable secret sharing could tell)
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
        message.require_fields(5)
        channel_public_key = message.raw(0, length=PUBLIC_KEY_BYTES)
        mask_public_key = message.raw(1, length=PUBLIC_KEY_BYTES)
        signature = message.raw(2, length=SIGNATURE_BYTES)
        validate_public_key(channel_public_key)
        validate_public_key(mask_public_key)
        statement = advertisement(
            self.round, self.session, sender, channel_public_key, mask_public_key
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
        self.key_signatures[sender] = signature
        n = len(self.clients)
        publics = message.raw(3, length=n * PUBLIC_KEY_BYTES)
        signed = message.raw(4, length=n * SIGNATURE_BYTES)
        self.receive_keys[sender] = {
            p: (publics[i * PUBLIC_KEY_BYTES : (i + 1) * PUBLIC_KEY_BYTES],
                signed[i * SIGNATURE_BYTES : (i + 1) * SIGNATURE_BYTES])
            for i, p in enumerate(self.clients)
        }  # fmt: skip

    # --- share_keys --------------------------------------------------------------------------
    @broadcasts(SecAggStage.SHARE_KEYS)
    def _relay_keys(self, stage: str) -> dict[int, bytes]:
        advertised = sorted(self.alive)  # U_1
        channel = {c: self.channel_public_keys[c] for c in advertised}
        mask = {c: self.mask_public_keys[c] for c in advertised}
        self.graph_seed = graph_seed(self.round, self.session, channel, mask)
        self.run_binding = self.session + self.graph_seed  # this run only: fresh keys in it
        self.graph = neighbour_graph(advertised, self.degree, self.graph_seed)
        keys = [ids(advertised), b"".join(channel.values()), b"".join(mask.values()),
                b"".join(self.key_signatures[c] for c in advertised)]  # fmt: skip
        out = {}
        for c in advertised:  # and the receive keys c's holders made for it (unchecked here)
            holders = sorted((*self.graph[c], c))
            receive = [self.receive_keys[h][c] for h in holders]
            out[c] = self._server_message(stage, [*keys, b"".join(k for k, _ in receive),
                                                  b"".join(sig for _, sig in receive)])  # fmt: skip
        return out

    @receives(SecAggStage.SHARE_KEYS)
    def _take_sealed_shares(self, stage: str, sender: int, message: wire.Message) -> None:
        """The sender's sealed shares (their signatures are checked only if a holder reports
        a blob that does not open), and the holders whose receive keys it found unusable: a
        true claim drops the holder at the stage's close, a false one the sender now."""
        message.require_fields(5)
        unusable = message.array(4, dtype="<u4").tolist()
        holders = [j for j in (*self.graph[sender], sender) if j in self.channel_public_keys]
        if len(set(unusable)) != len(unusable) or not set(unusable) <= set(holders) - {sender}:
            raise UnknownSender(f"client {sender} reported keys of clients it does not seal to")
        for h in unusable:
            key, signature = self.receive_keys[h][sender]
            bound = self.session + self.channel_public_keys[h]
            if receive_key_usable(self.roster, key, signature, round=self.round, session=bound,
                                  holder=h, sender=sender):  # fmt: skip
                raise FalseComplaint(f"client {sender} refused client {h}'s sound receive key")
        self.unusable.update(unusable)  # proven: dropped at the stage's close
        holders = [j for j in holders if j not in unusable]
        if len(holders) < self.threshold:  # its secrets could never be rebuilt
            raise UnknownSender(f"client {sender} sealed to fewer than t usable holders")
        receivers = message.array(0, dtype="<u4", shape=(len(holders),))
        if sorted(receivers.tolist()) != sorted(holders):
            raise UnknownSender(f"client {sender} addressed shares outside its neighbours")
        blob = message.raw(1, length=len(holders) * SEALED_SHARE_BYTES)
        signed = message.raw(3, length=len(holders) * SIGNATURE_BYTES)
        for i, j in enumerate(receivers.tolist()):
            sealed = blob[i * SEALED_SHARE_BYTES : (i + 1) * SEALED_SHARE_BYTES]
            signature = signed[i * SIGNATURE_BYTES : (i + 1) * SIGNATURE_BYTES]
            self.mailbox.setdefault(j, {})[sender] = (sealed, signature)
        self.commitments[sender] = message.raw(2, length=32)

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
            out[c] = self._server_message(
                stage,
                [
                    ids(self.shared_keys_survivors),
                    ids(inbox),
                    b"".join(inbox[s][0] for s in sorted(inbox)),
                    b"".join(inbox[s][1] for s in sorted(inbox)),
                ],
            )
        return out

    @receives(SecAggStage.MASKED_INPUT)
    def _take_masked_input(self, stage: str, sender: int, message: wire.Message) -> None:
        message.require_fields(4)
        accused = message.array(0, dtype="<u4").tolist()
        evidence = message.raw(1, length=len(accused) * PUBLIC_KEY_BYTES)
        unsigned = message.array(2, dtype="<u4").tolist()
        complaints = set(accused) | set(unsigned)
        relayed = {s for s in self.mailbox.get(sender, {}) if s in self.shared_keys_survivors}
        if len(complaints) != len(accused) + len(unsigned) or not complaints <= relayed:
            raise UnknownSender(f"client {sender} complained about shares it was not sent")
        for i, accused_sender in enumerate(accused):
            revealed = evidence[i * PUBLIC_KEY_BYTES : (i + 1) * PUBLIC_KEY_BYTES]
            self._judge(sender, accused_sender, revealed)
        for accused_sender in unsigned:
            sealed, signature = self.mailbox[sender][accused_sender]
            bound = self.run_binding
            if blob_signed(self.roster, sealed, signature, round=self.round, session=bound,
                           sender=accused_sender, holder=sender):  # fmt: skip
                raise FalseComplaint(
                    f"client {sender} called client {accused_sender}'s signed blob unsigned"
                )
        packed = message.raw(3, length=self._packed_len())
        self.masked_sum += ring.unpack(packed, self.length, self.bits)
        self.masked[sender] = packed
        self.complaints[sender] = complaints

    def _judge(self, holder: int, sender: int, revealed: bytes) -> None:
        """Check ``holder``'s complaint about ``sender`` from the receive key it revealed
        (:func:`~fedshield.protocols.secagg.channels.complaint_holds`); a false or unproven
        complaint drops the accuser."""
        try:
            holds = complaint_holds(
                revealed, self.receive_keys[holder][sender][0], self.channel_public_keys[sender],
                self.mailbox[holder][sender][0], round=self.round, sender=sender, holder=holder,
                threshold=self.threshold,
            )  # fmt: skip
        except InvalidShare as exc:
            raise FalseComplaint(f"client {holder}'s complaint about {sender}: {exc}") from None
        if not holds:
            raise FalseComplaint(
                f"client {holder} complained about client {sender}'s shares, which are sound"
            )

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
        message.require_fields(4)
        dropped = set(self.shared_keys_survivors) - set(self.masked_input_survivors)
        own_group = {*self.graph[sender], sender}
        for ids_field, store, allowed in (
            (0, self.self_mask_seed_shares, set(self.masked_input_survivors)),
            (2, self.mask_key_shares, dropped),
        ):
            owners = message.array(ids_field, dtype="<u4").tolist()
            blob = message.raw(ids_field + 1, length=len(owners) * shamir.SHARE_BYTES)
            if len(set(owners)) != len(owners) or not set(owners) <= allowed & own_group:
                raise InvalidShare(f"client {sender} revealed shares it must not reveal")
            for i, owner in enumerate(owners):
                share = shamir.Share.from_bytes(
                    blob[i * shamir.SHARE_BYTES : (i + 1) * shamir.SHARE_BYTES]
                )
                if (share.x, share.threshold, share.secret_len) != (
                    sender + 1,
                    self.threshold,
                    SEED_BYTES,
                ):
                    raise InvalidShare(f"client {sender} sent a share that is not its own")
                store.setdefault(owner, []).append(share)

    @closes(SecAggStage.ADVERTISE_KEYS, SecAggStage.UNMASK)
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
            remove_masks(self, total, survivors)
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
