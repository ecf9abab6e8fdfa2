"""``secagg``: SecAgg+ secure aggregation with pairwise masks and Shamir dropout recovery.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
CCS 2017 (the four rounds, double masking); Bell et al., "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020 (masks and shares only along a random k-regular graph).

Threat model. The server is honest-but-curious: it follows the protocol but tries to learn from
what it sees. It may collude with up to ``t - 1`` clients of any share group (a client and its
``k`` neighbours) and still learns nothing about an honest client's update beyond the sum over
the survivors. There is no consistency-check round, so a *malicious* server that lies about who
dropped out is not covered. Dropouts: any client may vanish at any stage; the round completes
while every stage keeps at least ``t`` clients and every needed secret keeps ``t`` surviving
holders; below that it raises :class:`~fedshield.errors.SecAggAbort` and nothing is revealed.
What leaks: the weighted sum of the survivors' quantized updates, their total weight, and the
set of survivors. Clients that drop after sending their masked input are still counted.

Stages: ``advertise_keys`` (two fresh X25519 public keys per client) → ``share_keys`` (Shamir
shares of the self-mask seed and of the mask-agreement secret key, AES-GCM encrypted to each
neighbour, relayed by the server) → ``masked_input`` (the bit-packed masked vector in
Z_{2^b}) → ``unmask`` (shares of survivors' self-mask seeds and of dropped clients' secret keys).
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
import struct

import numpy as np

from fedshield import wire
from fedshield.crypto import ring, shamir
from fedshield.crypto.keys import (
    PUBLIC_KEY_BYTES,
    KeyPair,
    open_share,
    seal_share,
    validate_public_key,
)
from fedshield.crypto.prg import SEED_BYTES, add_mask, mask_scratch, ring_dtype
from fedshield.crypto.secagg_config import SecAggConfig, neighbour_graph
from fedshield.errors import InvalidShare, ProtocolAbort, SecAggAbort, UnknownSender, WrongShape
from fedshield.protocols.base import ClientSession, Revealed, ServerSession

__all__ = ["SecAggClient", "SecAggServer"]

PROTOCOL_ID = 2
STAGES = ("advertise_keys", "share_keys", "masked_input", "unmask")
_PAIR = struct.Struct("<II")
_SHARE_PLAIN = _PAIR.size + 2 * shamir.SHARE_BYTES
_SEALED = 12 + _SHARE_PLAIN + 16


def _ids(values) -> np.ndarray:
    return np.array(sorted(values), dtype=np.uint32)


def _mask_info(round: int, a: int, b: int) -> bytes:
    lo, hi = min(a, b), max(a, b)
    return b"fedshield/secagg/pairwise-mask" + struct.pack("<III", round, lo, hi)


def _enc_info(round: int, a: int, b: int) -> bytes:
    lo, hi = min(a, b), max(a, b)
    return b"fedshield/secagg/share-key" + struct.pack("<III", round, lo, hi)


def _add_pairwise_mask(
    acc: np.ndarray,
    keys: KeyPair,
    peer_public: bytes,
    *,
    round: int,
    me: int,
    peer: int,
    scratch: np.ndarray,
    undo: bool = False,
) -> None:
    """Add ``me``'s pairwise mask with ``peer`` (``undo``: take it away): +mask for the
    smaller id, -mask for the larger, so each pair cancels in the sum."""
    seed = keys.agree(peer_public, info=_mask_info(round, me, peer))
    add_mask(acc, seed, subtract=(me > peer) != undo, scratch=scratch)


def _commit(seed: bytes, *, round: int, client: int) -> bytes:
    """Hash commitment to a self-mask seed (the seed has 256 bits of entropy: hiding)."""
    label = b"fedshield/secagg/self-seed" + struct.pack("<II", round, client)
    return hashlib.sha256(label + seed).digest()


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

    def describe(self) -> dict:
        """Ring bits, Shamir threshold and neighbours per client of this round."""
        return {"ring_bits": self.bits, "threshold": self.threshold, "neighbours": self.k}

    def _packed_len(self) -> int:
        return ((self.dim + 1) * self.bits + 7) // 8

    def _max_message_bytes(self, stage: str) -> int:
        n = len(self.clients)
        if stage == "masked_input":
            return 256 + 4 * n + self._packed_len()
        return 256 + n * (8 + 2 * _SEALED + 2 * shamir.SHARE_BYTES)

    def _broadcast(self, stage: str) -> dict[int, bytes]:
        alive = sorted(self.alive)
        if stage == "advertise_keys":
            msg = self._server_message(stage, [self.config.digest(), _ids(self.clients)])
            return {c: msg for c in alive}
        if stage == "share_keys":
            self.graph = neighbour_graph(alive, self.k, self.graph_seed)
            fields = [
                self.graph_seed,
                _ids(alive),
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
                    stage, [_ids(alive), _ids(inbox), b"".join(inbox[s] for s in sorted(inbox))]
                )
            return out
        # unmask
        self.u3 = tuple(alive)
        dropped = _ids(set(self.u2) - set(self.u3))
        msg = self._server_message(stage, [_ids(self.u3), dropped])
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
            blob = message.raw(1, length=len(expected) * _SEALED)
            for i, j in enumerate(receivers.tolist()):
                self.mailbox.setdefault(j, {})[sender] = blob[i * _SEALED : (i + 1) * _SEALED]
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
                    lambda b, c=c: _commit(b, round=self.round, client=c) == self.commitments[c],
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
                    _add_pairwise_mask(
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
        mean = ring.decode_mean(
            total[:-1], weight, clip=self.config.clip, quant_bits=self.config.quant_bits
        )
        return Revealed(
            contributors=tuple(survivors),
            weighted_sum=mean.astype(np.float64) * weight,
            total_weight=float(weight),
            dropped=tuple(c for c in self.clients if c not in self.masked),
        )


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
        super().__init__(client_id=client_id, round=round, update=update, weight=weight)
        self.config = config
        # The stochastic-rounding stream: reproducible when the engine passes a seed.
        self.quant_seed = secrets.randbits(64) if quant_seed is None else quant_seed
        self.sent: np.ndarray | None = None  # the dequantized update the sum will contain
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
            h: self.c_keys.agree(self.c_pk[h], info=_enc_info(self.round, me, h)) for h in holders
        }
        for h, b, s in zip(holders, b_shares, s_shares, strict=True):
            key = self.share_keys[h]
            plain = _PAIR.pack(me, h) + b.to_bytes() + s.to_bytes()
            sealed.append(seal_share(key, plain, round=self.round, sender=me, receiver=h))
        commitment = _commit(self.self_seed, round=self.round, client=me)
        return self._client_message(
            stage, [np.array(holders, dtype=np.uint32), b"".join(sealed), commitment]
        )

    def _masked_input(self, stage: str, message: wire.Message) -> bytes:
        message.require_fields(3)
        u2 = set(message.array(0, dtype="<u4").tolist())
        senders = message.array(1, dtype="<u4").tolist()
        blob = message.raw(2, length=len(senders) * _SEALED)
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
                    blob[i * _SEALED : (i + 1) * _SEALED],
                    round=self.round,
                    sender=sender,
                    receiver=me,
                )
                if _PAIR.unpack_from(plain) != (sender, me):
                    raise InvalidShare("share addressed to another pair")
                o = _PAIR.size
                b = shamir.Share.from_bytes(plain[o : o + shamir.SHARE_BYTES])
                s = shamir.Share.from_bytes(plain[o + shamir.SHARE_BYTES :])
                self.held[sender] = (b, s)
            except InvalidShare:
                complaints.append(sender)  # the sender is treated as dropped by the server
        length = self.update.size + 1
        config = self.config
        y = np.empty(length, dtype=ring_dtype(self.bits))
        levels = ring.encode(
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
                _add_pairwise_mask(
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
