"""The SecAgg+ server session (threat model and stages: :mod:`fedshield.protocols.secagg`)."""

from __future__ import annotations

import hashlib
import itertools
import secrets

import numpy as np

from fedshield import wire
from fedshield.crypto import ring, shamir
from fedshield.crypto.keys import PUBLIC_KEY_BYTES, KeyPair, validate_public_key
from fedshield.crypto.prg import SEED_BYTES, add_mask, mask_scratch, ring_dtype
from fedshield.errors import InvalidShare, ProtocolAbort, SecAggAbort, UnknownSender, WrongShape
from fedshield.protocols.base import Revealed, ServerSession
from fedshield.protocols.secagg.common import (
    PROTOCOL_ID,
    SEALED_SHARE_BYTES,
    STAGES,
    add_pairwise_mask,
    commit,
    ids,
)
from fedshield.protocols.secagg.config import SecAggConfig, neighbour_graph

__all__ = ["SecAggServer"]


def _verified_secret(shares: list[shamir.Share], check, max_tries: int = 64) -> bytes:
    """Reconstruct from ``t`` shares and check it against the owner's commitment; if a share
    was forged, try other ``t``-subsets (when more than ``t`` shares are at hand).

    Raises:
        SecAggAbort: when no subset tried yields a secret that passes ``check``.
    """
    if not shares:
        raise SecAggAbort("no shares to reconstruct from")
    t = shares[0].threshold
    for subset in itertools.islice(itertools.combinations(shares, t), max_tries):
        try:
            secret = shamir.reconstruct(list(subset))
            if check(secret):
                return secret
        except (InvalidShare, WrongShape):
            continue
    if len(shares) < t:
        raise SecAggAbort(f"{len(shares)} shares, the threshold is {t}")
    raise SecAggAbort("no subset of the revealed shares matches the owner's commitment")


class SecAggServer(ServerSession):
    """Server side: relays keys and shares, sums masked inputs, removes the masks it may."""

    protocol_id = PROTOCOL_ID
    stages = STAGES

    def __init__(self, *, round: int, clients, dim: int, config: SecAggConfig) -> None:
        super().__init__(round=round, clients=clients, dim=dim)
        n = len(self.clients)
        self.config = config
        self.bits = config.bits(n)
        self.threshold = config.threshold_for(n)
        self.k = config.degree(n)
        self.graph_seed = secrets.token_bytes(32)  # public randomness, chosen by the server
        self.graph: dict[int, tuple[int, ...]] = {}
        self.c_pk: dict[int, bytes] = {}
        self.s_pk: dict[int, bytes] = {}
        self.mailbox: dict[int, dict[int, bytes]] = {}  # receiver -> sender -> sealed share
        self.masked: dict[int, bytes] = {}  # packed masked inputs, already in masked_sum
        self.masked_sum = np.zeros(dim + 1, dtype=ring_dtype(self.bits))
        self.complaints: dict[int, set[int]] = {}  # complainer -> senders of bad shares
        self.u2: tuple[int, ...] = ()
        self.u3: tuple[int, ...] = ()
        self.shares_b: dict[int, list[shamir.Share]] = {}
        self.shares_s: dict[int, list[shamir.Share]] = {}
        self.commitments: dict[int, bytes] = {}  # client -> hash of its self-mask seed
        self.unmasked: np.ndarray | None = None  # the revealed integer sum

    def describe(self) -> dict:
        """Ring bits, Shamir threshold and neighbours per client of this round, and after the
        reveal the SHA-256 of the unmasked integer sum (to compare runs bit for bit)."""
        digest = None
        if self.unmasked is not None:
            digest = hashlib.sha256(self.unmasked.astype("<u8").tobytes()).hexdigest()
        return {
            "ring_bits": self.bits,
            "threshold": self.threshold,
            "neighbours": self.k,
            "aggregate_sha256": digest,
        }

    def _packed_len(self) -> int:
        return ((self.dim + 1) * self.bits + 7) // 8

    def _max_message_bytes(self, stage: str) -> int:
        n = len(self.clients)
        if stage == "masked_input":
            return 256 + 4 * n + self._packed_len()
        return 256 + n * (8 + 2 * SEALED_SHARE_BYTES + 2 * shamir.SHARE_BYTES)

    def _broadcast(self, stage: str) -> dict[int, bytes]:
        alive = sorted(self.alive)
        if stage == "advertise_keys":
            msg = self._server_message(stage, [self.config.digest(), ids(self.clients)])
            return {c: msg for c in alive}
        if stage == "share_keys":
            self.graph = neighbour_graph(alive, self.k, self.graph_seed)
            fields = [
                self.graph_seed,
                ids(alive),
                b"".join(self.c_pk[c] for c in alive),
                b"".join(self.s_pk[c] for c in alive),
            ]
            msg = self._server_message(stage, fields)
            return {c: msg for c in alive}
        if stage == "masked_input":
            self.u2 = tuple(alive)
            out = {}
            for c in alive:
                inbox = {s: m for s, m in self.mailbox.get(c, {}).items() if s in self.alive}
                out[c] = self._server_message(
                    stage, [ids(alive), ids(inbox), b"".join(inbox[s] for s in sorted(inbox))]
                )
            return out
        # unmask
        self.u3 = tuple(alive)
        dropped = ids(set(self.u2) - set(self.u3))
        msg = self._server_message(stage, [ids(self.u3), dropped])
        return {c: msg for c in alive}

    def _receive(self, stage: str, sender: int, message: wire.Message) -> None:
        if stage == "advertise_keys":
            message.require_fields(2)
            c_pk = message.raw(0, length=PUBLIC_KEY_BYTES)
            s_pk = message.raw(1, length=PUBLIC_KEY_BYTES)
            validate_public_key(c_pk)
            validate_public_key(s_pk)
            if c_pk == s_pk or c_pk in self.c_pk.values() or s_pk in self.s_pk.values():
                raise WrongShape(f"client {sender} reused a public key")
            self.c_pk[sender], self.s_pk[sender] = c_pk, s_pk
        elif stage == "share_keys":
            message.require_fields(3)
            self.commitments[sender] = message.raw(2, length=32)
            expected = [j for j in (*self.graph[sender], sender) if j in self.c_pk]
            receivers = message.array(0, dtype="<u4", shape=(len(expected),))
            if sorted(receivers.tolist()) != sorted(expected):
                raise UnknownSender(f"client {sender} addressed shares outside its neighbours")
            blob = message.raw(1, length=len(expected) * SEALED_SHARE_BYTES)
            for i, j in enumerate(receivers.tolist()):
                self.mailbox.setdefault(j, {})[sender] = blob[
                    i * SEALED_SHARE_BYTES : (i + 1) * SEALED_SHARE_BYTES
                ]
        elif stage == "masked_input":
            message.require_fields(2)
            complaints = set(message.array(0, dtype="<u4").tolist())
            if not complaints <= {*self.graph[sender], sender}:
                raise UnknownSender(f"client {sender} complained about a non-neighbour")
            packed = message.raw(1, length=self._packed_len())
            self.masked_sum += ring.unpack(packed, self.dim + 1, self.bits)
            self.masked[sender] = packed
            self.complaints[sender] = complaints
        else:
            message.require_fields(4)
            for ids_field, shares_field, store, allowed in (
                (0, 1, self.shares_b, set(self.u3)),
                (2, 3, self.shares_s, set(self.u2) - set(self.u3)),
            ):
                ids = message.array(ids_field, dtype="<u4").tolist()
                blob = message.raw(shares_field, length=len(ids) * shamir.SHARE_BYTES)
                if len(set(ids)) != len(ids) or not set(ids) <= allowed & {
                    *self.graph[sender],
                    sender,
                }:
                    raise InvalidShare(f"client {sender} revealed shares it must not reveal")
                for i, owner in enumerate(ids):
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

    def _close_stage(self, stage: str) -> None:
        if stage == "masked_input":
            # A client whose shares failed authentication at a neighbour counts as dropped.
            accused = set().union(*self.complaints.values())
            self.alive -= accused
            for c in accused & set(self.masked):
                self.masked_sum -= ring.unpack(self.masked.pop(c), self.dim + 1, self.bits)
        if len(self.alive) < self.threshold:
            raise SecAggAbort(
                f"round {self.round}: {len(self.alive)} clients left after {stage!r}, "
                f"the threshold is {self.threshold}"
            )

    def _reveal(self) -> Revealed:
        survivors = sorted(self.masked)
        dropped = sorted(set(self.u2) - set(survivors))
        total = self.masked_sum
        scratch = mask_scratch(self.dim + 1, self.bits)
        try:
            for c in survivors:
                seed = _verified_secret(
                    self.shares_b.get(c, []),
                    lambda b, c=c: commit(b, round=self.round, client=c) == self.commitments[c],
                )
                add_mask(total, seed, subtract=True, scratch=scratch)
            for j in dropped:
                # Survivors that complained about j left their mask with j out of their input.
                paired = [
                    i
                    for i in self.graph[j]
                    if i in self.masked and j not in self.complaints.get(i, ())
                ]
                if not paired:
                    continue
                secret = _verified_secret(
                    self.shares_s.get(j, []),
                    lambda b, j=j: KeyPair.from_private_bytes(b).public_bytes == self.s_pk[j],
                )
                keys = KeyPair.from_private_bytes(secret)
                for i in paired:  # i added sgn(i, j)·mask(i, j); take it away
                    add_pairwise_mask(
                        total,
                        keys,
                        self.s_pk[i],
                        round=self.round,
                        me=i,
                        peer=j,
                        scratch=scratch,
                        undo=True,
                    )
        except (ProtocolAbort, InvalidShare, WrongShape) as exc:
            raise SecAggAbort(f"round {self.round}: cannot unmask ({exc})") from exc
        total &= total.dtype.type((1 << self.bits) - 1)
        self.unmasked = total  # sum_i w_i q_i and sum_i w_i: all the server learns
        weight = int(total[-1])
        if weight == 0:
            raise SecAggAbort(f"round {self.round}: the unmasked total weight is zero")
        mean = ring.dequantize_mean(
            total[:-1], weight, clip=self.config.clip, quant_bits=self.config.quant_bits
        )
        return Revealed(
            contributors=tuple(survivors),
            weighted_sum=mean.astype(np.float64) * weight,
            total_weight=float(weight),
            dropped=tuple(c for c in self.clients if c not in self.masked),
        )
