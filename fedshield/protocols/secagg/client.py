"""SecAgg+ client session: fresh keys, Shamir shares to neighbours, a masked and bit-packed
input, and the shares the server may see. The protocol and its threat model: :mod:`secagg`.
"""

from __future__ import annotations

import secrets

import numpy as np

from fedshield import wire
from fedshield.crypto import ring, shamir
from fedshield.crypto.keys import PUBLIC_KEY_BYTES, KeyPair, open_share, seal_share
from fedshield.crypto.prg import SEED_BYTES, add_mask, mask_scratch, ring_dtype
from fedshield.errors import InvalidShare, SecAggAbort, UnknownSender, WrongShape
from fedshield.protocols.base import ClientSession
from fedshield.protocols.secagg.common import (
    PAIR,
    PROTOCOL_ID,
    SEALED_SHARE_BYTES,
    STAGES,
    add_pairwise_mask,
    commit,
    enc_info,
)
from fedshield.protocols.secagg.config import SecAggConfig, neighbour_graph

__all__ = ["SecAggClient"]


class SecAggClient(ClientSession):
    """Client side: fresh keys, shares to neighbours, a masked and bit-packed input."""

    protocol_id = PROTOCOL_ID
    stages = STAGES

    def __init__(
        self,
        *,
        client_id: int,
        round: int,
        update: np.ndarray,
        weight: float,
        config: SecAggConfig,
        quant_seed: int | None = None,
    ) -> None:
        super().__init__(
            client_id=client_id, round=round, update=update, weight=weight, quant_seed=quant_seed
        )
        self.config = config
        self.c_keys = KeyPair.generate()
        self.s_keys = KeyPair.generate()
        self.self_seed = secrets.token_bytes(SEED_BYTES)
        self.held: dict[int, tuple[shamir.Share, shamir.Share]] = {}

    def _handle(self, stage: str, message: wire.Message) -> bytes:
        return getattr(self, f"_{stage}")(stage, message)

    def _advertise_keys(self, stage: str, message: wire.Message) -> bytes:
        message.require_fields(2)
        if message.raw(0, length=32) != self.config.digest():
            raise WrongShape("the server's SecAgg+ parameters differ from this client's")
        self.clients = message.array(1, dtype="<u4").tolist()
        if self.client_id not in self.clients:
            raise UnknownSender(f"client {self.client_id} is not in this round")
        self.n = len(self.clients)
        self.bits = self.config.bits(self.n)
        self.threshold = self.config.threshold_for(self.n)
        return self._client_message(stage, [self.c_keys.public_bytes, self.s_keys.public_bytes])

    def _share_keys(self, stage: str, message: wire.Message) -> bytes:
        message.require_fields(4)
        seed = message.raw(0, length=32)
        u1 = message.array(1, dtype="<u4").tolist()
        c_blob = message.raw(2, length=len(u1) * PUBLIC_KEY_BYTES)
        s_blob = message.raw(3, length=len(u1) * PUBLIC_KEY_BYTES)
        if len(set(u1)) != len(u1) or not set(u1) <= set(self.clients) or len(u1) < self.threshold:
            raise SecAggAbort(f"client {self.client_id}: bad or too small key list ({len(u1)})")
        self.c_pk = {c: c_blob[i * 32 : (i + 1) * 32] for i, c in enumerate(u1)}
        self.s_pk = {c: s_blob[i * 32 : (i + 1) * 32] for i, c in enumerate(u1)}
        me = self.client_id
        if (
            self.c_pk.get(me) != self.c_keys.public_bytes
            or self.s_pk.get(me) != self.s_keys.public_bytes
        ):
            raise WrongShape("the server relayed keys that are not this client's")
        if len(set(self.c_pk.values()) | set(self.s_pk.values())) != 2 * len(u1):
            raise WrongShape("the server relayed repeated public keys")
        self.neighbours = neighbour_graph(u1, self.config.degree(self.n), seed, only=me)[me]
        holders = sorted((*self.neighbours, me))
        xs = [h + 1 for h in holders]
        b_shares = shamir.split(self.self_seed, threshold=self.threshold, xs=xs)
        s_shares = shamir.split(self.s_keys.private_bytes(), threshold=self.threshold, xs=xs)
        sealed = []
        self.share_keys = {
            h: self.c_keys.agree(self.c_pk[h], info=enc_info(self.round, me, h)) for h in holders
        }
        for h, b, s in zip(holders, b_shares, s_shares, strict=True):
            key = self.share_keys[h]
            plain = PAIR.pack(me, h) + b.to_bytes() + s.to_bytes()
            sealed.append(seal_share(key, plain, round=self.round, sender=me, receiver=h))
        commitment = commit(self.self_seed, round=self.round, client=me)
        return self._client_message(
            stage, [np.array(holders, dtype=np.uint32), b"".join(sealed), commitment]
        )

    def _masked_input(self, stage: str, message: wire.Message) -> bytes:
        message.require_fields(3)
        u2 = set(message.array(0, dtype="<u4").tolist())
        senders = message.array(1, dtype="<u4").tolist()
        blob = message.raw(2, length=len(senders) * SEALED_SHARE_BYTES)
        me = self.client_id
        if not u2 <= set(self.c_pk) or me not in u2 or len(u2) < self.threshold:
            raise SecAggAbort(f"client {me}: the survivor list is inconsistent or too small")
        complaints = []
        for i, sender in enumerate(senders):
            if sender not in (*self.neighbours, me) or sender not in u2:
                raise UnknownSender(f"client {me} got a share from non-neighbour {sender}")
            key = self.share_keys[sender]
            try:
                plain = open_share(
                    key,
                    blob[i * SEALED_SHARE_BYTES : (i + 1) * SEALED_SHARE_BYTES],
                    round=self.round,
                    sender=sender,
                    receiver=me,
                )
                if PAIR.unpack_from(plain) != (sender, me):
                    raise InvalidShare("share addressed to another pair")
                o = PAIR.size
                b = shamir.Share.from_bytes(plain[o : o + shamir.SHARE_BYTES])
                s = shamir.Share.from_bytes(plain[o + shamir.SHARE_BYTES :])
                self.held[sender] = (b, s)
            except InvalidShare:
                complaints.append(sender)  # the sender is treated as dropped by the server
        length = self.update.size + 1
        config = self.config
        y = np.empty(length, dtype=ring_dtype(self.bits))
        levels = ring.quantize(
            self.update,
            clip=config.clip,
            quant_bits=config.quant_bits,
            seed=self.quant_seed,
            out=y[:-1],
        )
        self.sent = ring.dequantize(levels, clip=config.clip, quant_bits=config.quant_bits)
        weight = config.integer_weight(self.weight)
        if weight != 1:
            levels *= y.dtype.type(weight)
        y[-1] = weight
        scratch = mask_scratch(length, self.bits)
        add_mask(y, self.self_seed, scratch=scratch)
        for j in self.neighbours:
            if j in u2 and j not in complaints:  # no mask with a peer whose shares were bad
                add_pairwise_mask(
                    y, self.s_keys, self.s_pk[j], round=self.round, me=me, peer=j, scratch=scratch
                )
        y &= y.dtype.type((1 << self.bits) - 1)
        return self._client_message(
            stage, [np.array(complaints, dtype=np.uint32), ring.pack(y, self.bits)]
        )

    def _unmask(self, stage: str, message: wire.Message) -> bytes:
        message.require_fields(2)
        u3 = set(message.array(0, dtype="<u4").tolist())
        dropped = set(message.array(1, dtype="<u4").tolist())
        me = self.client_id
        if u3 & dropped or me not in u3 or len(u3) < self.threshold:
            raise SecAggAbort(f"client {me}: survivors and dropped overlap, or too few survivors")
        if not (u3 | dropped) <= set(self.c_pk):
            raise SecAggAbort(f"client {me}: unknown clients in the unmask request")
        reveal_b = sorted(j for j in u3 if j in self.held)
        reveal_s = sorted(j for j in dropped if j in self.held)
        return self._client_message(
            stage,
            [
                np.array(reveal_b, dtype=np.uint32),
                b"".join(self.held[j][0].to_bytes() for j in reveal_b),
                np.array(reveal_s, dtype=np.uint32),
                b"".join(self.held[j][1].to_bytes() for j in reveal_s),
            ],
        )
