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
from fedshield.crypto.keys import PUBLIC_KEY_BYTES, KeyPair, validate_public_key
from fedshield.crypto.prg import SEED_BYTES, add_mask, mask_scratch, ring_dtype
from fedshield.errors import (
    InvalidShare,
    ProtocolAbort,
    SecAggAbort,
    UnknownSender,
    WrongShape,
)
from fedshield.protocols.base import Revealed, ServerSession, broadcasts, closes, receives
from fedshield.protocols.ranges import TensorRanges
from fedshield.protocols.roster import Roster
from fedshield.protocols.secagg.common import (
    ADVERTISE_LABEL,
    CONSISTENCY_LABEL,
    PROTOCOL_ID,
    SEALED_SHARE_BYTES,
    STAGES,
    SecAggStage,
    add_pairwise_mask,
    advertisement,
    commit,
    graph_seed,
    ids,
    survivor_statement,
)
from fedshield.protocols.secagg.config import SecAggConfig, neighbour_graph
from fedshield.protocols.secagg.recovery import decode_secret

__all__ = ["SecAggServer"]


class SecAggServer(ServerSession):
    """Server side: relays keys and shares, sums masked inputs, removes the masks it may.

    Args:
        round, clients, dim: as for every :class:`~fedshield.protocols.base.ServerSession`.
        config: the round's :class:`SecAggConfig` (each client checks it is the same).
        roster: the federation's roster: ``clients`` must be members; every key and
            signature a client sends is checked against it before it is relayed.
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
        if strangers:
            raise ValueError(f"clients {strangers} are not on the federation's roster")
        n = len(self.clients)
        self.config, self.roster = config, roster
        self.ranges = ranges
        self.grid = config.grid(ranges)
        if ranges is not None:
            ranges.check_covers(dim)
        self.params = config.digest(ranges)  # bound into every pairwise mask
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
        self.mailbox: dict[int, dict[int, bytes]] = {}  # receiver -> sender -> sealed share
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
        # forged it, or the owner dealt it wrong (without verifiable secret sharing the
        # server cannot tell which), so neither is named alone
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
            return 256 + 4 * n + self._packed_len()
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
        message.require_fields(3)
        channel_public_key = message.raw(0, length=PUBLIC_KEY_BYTES)
        mask_public_key = message.raw(1, length=PUBLIC_KEY_BYTES)
        signature = message.raw(2, length=SIGNATURE_BYTES)
        validate_public_key(channel_public_key)
        validate_public_key(mask_public_key)
        statement = advertisement(
            self.round, self.params, sender, channel_public_key, mask_public_key
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

    # --- share_keys --------------------------------------------------------------------------
    @broadcasts(SecAggStage.SHARE_KEYS)
    def _relay_keys(self, stage: str) -> dict[int, bytes]:
        advertised = sorted(self.alive)  # U_1
        channel = {c: self.channel_public_keys[c] for c in advertised}
        mask = {c: self.mask_public_keys[c] for c in advertised}
        seed = graph_seed(self.round, self.params, channel, mask)
        self.graph = neighbour_graph(advertised, self.degree, seed)
        return self._to_all_alive(
            stage,
            [
                ids(advertised),
                b"".join(channel.values()),
                b"".join(mask.values()),
                b"".join(self.key_signatures[c] for c in advertised),
            ],
        )

    @receives(SecAggStage.SHARE_KEYS)
    def _take_sealed_shares(self, stage: str, sender: int, message: wire.Message) -> None:
        message.require_fields(3)
        self.commitments[sender] = message.raw(2, length=32)
        holders = [j for j in (*self.graph[sender], sender) if j in self.channel_public_keys]
        receivers = message.array(0, dtype="<u4", shape=(len(holders),))
        if sorted(receivers.tolist()) != sorted(holders):
            raise UnknownSender(f"client {sender} addressed shares outside its neighbours")
        blob = message.raw(1, length=len(holders) * SEALED_SHARE_BYTES)
        for i, j in enumerate(receivers.tolist()):
            sealed = blob[i * SEALED_SHARE_BYTES : (i + 1) * SEALED_SHARE_BYTES]
            self.mailbox.setdefault(j, {})[sender] = sealed

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
                    b"".join(inbox[s] for s in sorted(inbox)),
                ],
            )
        return out

    @receives(SecAggStage.MASKED_INPUT)
    def _take_masked_input(self, stage: str, sender: int, message: wire.Message) -> None:
        message.require_fields(2)
        complaints = set(message.array(0, dtype="<u4").tolist())
        if not complaints <= {*self.graph[sender], sender}:
            raise UnknownSender(f"client {sender} complained about a non-neighbour")
        packed = message.raw(1, length=self._packed_len())
        self.masked_sum += ring.unpack(packed, self.length, self.bits)
        self.masked[sender] = packed
        self.complaints[sender] = complaints

    @closes(SecAggStage.MASKED_INPUT)
    def _drop_accused(self, stage: str) -> None:
        """A client whose shares failed authentication at a neighbour counts as dropped."""
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
        statement = survivor_statement(self.round, self.params, self.masked_input_survivors)
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

    @closes(SecAggStage.ADVERTISE_KEYS, SecAggStage.SHARE_KEYS, SecAggStage.UNMASK)
    def _check_threshold(self, stage: str) -> None:
        minimum = max(self.threshold, self.config.min_clients)
        if len(self.alive) < minimum:
            raise SecAggAbort(
                f"round {self.round}: {len(self.alive)} clients left after '{stage}', "
                f"the threshold is {self.threshold} and the pinned minimum "
                f"{self.config.min_clients}"
            )

    # --- reveal ------------------------------------------------------------------------------
    def _reveal(self) -> Revealed:
        survivors = sorted(self.masked)
        total = self.masked_sum
        try:
            self._remove_masks(total, survivors)
        except (ProtocolAbort, InvalidShare, WrongShape) as exc:
            raise SecAggAbort(f"round {self.round}: cannot unmask ({exc})") from exc
        total &= total.dtype.type((1 << self.bits) - 1)
        self.unmasked = total  # the summed levels and tail values: all the server learns
        weighted_sum, weight = self._weighted_sum(total, len(survivors))
        return Revealed(
            contributors=tuple(survivors),
            weighted_sum=weighted_sum,
            total_weight=float(weight),
            dropped=tuple(c for c in self.clients if c not in self.masked),
            range_counts=self._range_counts(total, len(survivors)),
        )

    def _range_counts(self, total: np.ndarray, count: int) -> np.ndarray | None:
        """The summed range statistic, checked (``None`` with a fixed clip)."""
        if self.ranges is None:
            return None
        counts = total[self.dim + self.config.tail_values :].astype(np.int64)
        try:
            self.ranges.check_counts(counts, count)
        except ValueError as exc:
            raise SecAggAbort(f"round {self.round}: {exc}") from None
        return counts

    def _weighted_sum(self, total: np.ndarray, count: int) -> tuple[np.ndarray, int]:
        """``(sum_i W_i x_i, sum_i W_i)`` from the unmasked ring sum of ``count`` clients."""
        config, dim = self.config, self.dim
        digits = total[dim : dim + config.weight_digits]
        weight = ring.from_digits(digits, quant_bits=config.quant_bits)
        integer = config.weighting == "integer"
        counted = count if integer else int(total[dim + config.weight_digits])
        if counted != count:
            raise SecAggAbort(
                f"round {self.round}: the sum holds {counted} updates, {count} survived"
            )
        self._check_in_range(total, count, weight)
        if integer:
            mean = self.grid.decode_mean(total[:dim], weight)
            return mean.astype(np.float64) * weight, weight
        shares = self.grid.decode_sum(total[:dim], count)  # sum_i (W_i / top) x_i
        return shares * ring.weight_top(config.weight_bits), weight

    def _check_in_range(self, total: np.ndarray, count: int, weight: int) -> None:
        """Abort unless the unmasked sum is one ``count`` clients on the grid could send
        (:func:`~fedshield.crypto.ring.check_on_grid`)."""
        config, dim = self.config, self.dim
        try:
            ring.check_on_grid(
                total[:dim], total[dim : dim + config.weight_digits], count=count,
                weight=weight, quant_bits=config.quant_bits, weight_bits=config.weight_bits,
                integer=config.weighting == "integer",
            )  # fmt: skip
        except ValueError as exc:
            raise SecAggAbort(f"round {self.round}: {exc}") from None

    def _verified_secret(self, owner: int, shares: list[shamir.Share], check) -> bytes:
        """:func:`~fedshield.protocols.secagg.recovery.decode_secret` at this round's
        threshold, remembering the inconsistent (owner, holder) pairs."""
        secret, holders = decode_secret(shares, check, threshold=self.threshold)
        self.inconsistent.update((owner, h) for h in holders)
        return secret

    def _remove_masks(self, total: np.ndarray, survivors: list[int]) -> None:
        """Take the survivors' self masks and their pairwise masks with dropped clients out of
        ``total``, from the secrets the revealed shares reconstruct."""
        scratch = mask_scratch(self.length, self.bits)
        for c in survivors:
            seed = self._verified_secret(
                c,
                self.self_mask_seed_shares.get(c, []),
                lambda b, c=c: commit(b, round=self.round, client=c) == self.commitments[c],
            )
            add_mask(total, seed, subtract=True, scratch=scratch)
        for j in sorted(set(self.shared_keys_survivors) - set(survivors)):
            # Survivors that complained about j left their mask with j out of their input.
            paired = [
                i for i in self.graph[j] if i in self.masked and j not in self.complaints.get(i, ())
            ]
            if not paired:
                continue
            secret = self._verified_secret(
                j,
                self.mask_key_shares.get(j, []),
                lambda b, j=j: (
                    KeyPair.from_private_bytes(b).public_bytes == self.mask_public_keys[j]
                ),
            )
            dropped_mask_keys = KeyPair.from_private_bytes(secret)
            for i in paired:  # i added sgn(i, j)·mask(i, j); take it away
                add_pairwise_mask(
                    total,
                    dropped_mask_keys,
                    self.mask_public_keys[i],
                    round=self.round,
                    me=i,
                    peer=j,
                    params=self.params,
                    scratch=scratch,
                    undo=True,
                )
