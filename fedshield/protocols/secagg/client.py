"""SecAgg+ client session: fresh keys, Shamir shares to neighbours, a masked and bit-packed
input, and the shares the server may see. The protocol, its threat model and the legend from
the paper's notation to these names: :mod:`fedshield.protocols.secagg`.
"""

from __future__ import annotations

import secrets

import numpy as np

from fedshield import wire
from fedshield._validate import check_instance
from fedshield.crypto import merkle, ring, shamir
from fedshield.crypto.identity import SIGNATURE_BYTES, Identity
from fedshield.crypto.keys import PUBLIC_KEY_BYTES, KeyPair
from fedshield.crypto.prg import SEED_BYTES, add_mask, mask_scratch, ring_dtype
from fedshield.errors import (
    ConfigError,
    InvalidMessage,
    InvalidShare,
    SecAggAbort,
    UnknownSender,
    WrongShape,
)
from fedshield.protocols.base import ClientSession, handles
from fedshield.protocols.ranges import TensorRanges
from fedshield.protocols.roster import Roster
from fedshield.protocols.secagg import dealing
from fedshield.protocols.secagg.channels import (
    SEALED_SHARE_BYTES,
    deal,
    open_shares,
    receive_key_usable,
    receive_leaves,
    share_key,
)
from fedshield.protocols.secagg.common import (
    ADVERTISE_LABEL,
    CONSISTENCY_LABEL,
    MAX_CLIENT_ID,
    PROTOCOL_ID,
    STAGES,
    SecAggStage,
    add_pairwise_mask,
    advertisement,
    commit,
    graph_seed,
    session_binding,
    survivor_statement,
)
from fedshield.protocols.secagg.config import SecAggConfig, neighbour_graph
from fedshield.protocols.secagg.dealing import DEAL_LABEL, Dealt, parse_relayed
from fedshield.protocols.secagg.expulsion import reveal_pair_seeds

__all__ = ["SecAggClient"]


def _keyed(message: wire.Message, index: int, owners: list[int], size: int = PUBLIC_KEY_BYTES):
    """Field ``index``: fixed-size items (public keys, signatures), one per owner in order."""
    return dict(zip(owners, message.chunks(index, size=size, count=len(owners)), strict=True))


class SecAggClient(ClientSession):
    """Client side: fresh keys, shares to neighbours, a masked and bit-packed input.

    Args:
        client_id, round, update, weight, quant_seed: as for every
            :class:`~fedshield.protocols.base.ClientSession`.
        config: the round's :class:`SecAggConfig` (the server checks it is the same).
        roster: the federation's :class:`~fedshield.protocols.roster.Roster`: every peer
            key must be signed by a member, and a round must list at least its
            ``min_sites`` members.
        identity: this site's identity key (its public half is on the roster).
        ranges: the round's per-tensor ranges, when ``config.clip`` is ``None``
            (:mod:`fedshield.protocols.ranges`); checked against the server's as well.
    """

    protocol_id = PROTOCOL_ID
    stages = STAGES
    skippable = frozenset({SecAggStage.EXPEL})  # only for neighbours of an unkeyed client

    def __init__(
        self,
        *,
        client_id: int,
        round: int,
        update: np.ndarray,
        weight: float,
        config: SecAggConfig,
        roster: Roster,
        identity: Identity,
        quant_seed: int | None = None,
        ranges: TensorRanges | None = None,
    ) -> None:
        super().__init__(
            client_id=client_id, round=round, update=update, weight=weight, quant_seed=quant_seed
        )
        check_instance("config", config, SecAggConfig)
        check_instance("roster", roster, Roster, "Roster.enrol or Roster.load")
        check_instance("identity", identity, Identity)
        roster.check_identity(client_id, identity.public_bytes)
        if client_id > MAX_CLIENT_ID:
            raise ConfigError(f"secagg takes client ids up to {MAX_CLIENT_ID} (Shamir points)")
        self.config, self.roster, self.identity = config, roster, identity
        self.ranges = ranges
        self.grid = config.grid(ranges)
        if ranges is not None:
            ranges.check_covers(update.size)
        self.params = config.digest(ranges)  # bound into every pairwise mask
        self.channel_keys = KeyPair.generate()  # c_u: agrees the keys that seal shares
        self.mask_keys = KeyPair.generate()  # s_u: agrees the pairwise mask seeds
        self.self_mask_seed = secrets.token_bytes(SEED_BYTES)  # b_u
        # owner -> (this client's share of the owner's b, of the owner's s^SK)
        self.held_shares: dict[int, tuple[shamir.Share, shamir.Share]] = {}

    @handles(SecAggStage.ADVERTISE_KEYS)
    def _advertise_keys(self, stage: str, message: wire.Message) -> bytes:
        message.require_fields(2)
        if message.raw(0, length=32) != self.params:
            raise WrongShape("the server's SecAgg+ parameters differ from this client's")
        self.clients = message.array(1, dtype="<u4").tolist()
        if self.client_id not in self.clients:
            raise UnknownSender(f"client {self.client_id} is not in this round")
        strangers = sorted(set(self.clients) - set(self.roster.sites))
        if strangers or len(set(self.clients)) != len(self.clients):
            raise SecAggAbort(f"client {self.client_id}: the round lists non-members {strangers}")
        if max(self.clients) > MAX_CLIENT_ID:
            raise SecAggAbort(f"client {self.client_id}: ids above {MAX_CLIENT_ID} listed")
        self.n = len(self.clients)
        self.session = session_binding(self.params, self.clients)  # in every signature
        noise = self.config.noise  # distributed DP: never a sum of fewer than its t sites
        pinned = max(
            self.config.min_clients, self.roster.min_sites, noise.min_sites if noise else 1
        )
        if self.n < pinned:
            raise SecAggAbort(
                f"client {self.client_id}: the server lists {self.n} clients, fewer than the "
                f"pinned minimum of {pinned}"
            )
        self.bits = self.config.bits(self.n)
        try:
            self.threshold = self.config.threshold_for(self.n)
        except ValueError as exc:
            raise SecAggAbort(f"client {self.client_id}: {exc}") from None
        # Survivors every stage needs: the threshold, and never fewer than the pinned minimum.
        self.minimum = max(self.threshold, pinned)
        self.quorum = self.config.quorum(self.n)
        # r_{me,p}: one key per listed client p, to receive p's shares under (and reveal if
        # p's shares are bad: it opens nothing else); the root over them is signed
        self.receive_keys = {p: KeyPair.generate() for p in self.clients}
        publics = self._receive_publics()
        channel, mask = self.channel_keys.public_bytes, self.mask_keys.public_bytes
        root = merkle.root(receive_leaves(self.clients, publics))
        statement = advertisement(self.round, self.session, self.client_id, channel, mask, root)
        signature = self.roster.sign(self.identity, ADVERTISE_LABEL, statement)
        return self._client_message(stage, [channel, mask, signature, b"".join(publics)])

    def _receive_publics(self) -> list[bytes]:
        """The public receive keys, in the listed clients' order."""
        return [self.receive_keys[p].public_bytes for p in self.clients]

    @handles(SecAggStage.SHARE_KEYS)
    def _share_keys(self, stage: str, message: wire.Message) -> bytes:
        message.require_fields(7)
        advertised = message.array(0, dtype="<u4").tolist()  # U_1
        signatures = _keyed(message, 3, advertised, SIGNATURE_BYTES)
        self.receive_roots = _keyed(message, 4, advertised, merkle.HASH_BYTES)
        me = self.client_id
        if (
            len(set(advertised)) != len(advertised)
            or not set(advertised) <= set(self.clients)
            or len(advertised) < self.minimum
        ):
            raise SecAggAbort(f"client {me}: bad or too small key list ({len(advertised)})")
        self.channel_public_keys = _keyed(message, 1, advertised)
        self.mask_public_keys = _keyed(message, 2, advertised)
        if (
            self.channel_public_keys.get(me) != self.channel_keys.public_bytes
            or self.mask_public_keys.get(me) != self.mask_keys.public_bytes
        ):
            raise WrongShape("the server relayed keys that are not this client's")
        distinct = set(self.channel_public_keys.values()) | set(self.mask_public_keys.values())
        if len(distinct) != 2 * len(advertised):
            raise WrongShape("the server relayed repeated public keys")
        self._check_signed_keys(advertised, signatures)
        degree = self.config.degree(self.n)
        channel, mask = self.channel_public_keys, self.mask_public_keys
        self.graph_seed = graph_seed(self.round, self.session, channel, mask)
        self.run_binding = self.session + self.graph_seed  # this run only: fresh keys in it
        self.neighbours = neighbour_graph(advertised, degree, self.graph_seed, only=me)[me]
        holders, receive, unusable = self._holders_receive_keys(
            sorted((*self.neighbours, me)), message
        )
        if len(holders) < self.threshold:  # report them, and sit this round out
            holders = []
        sealed, commitments, signature = self._deal(holders, receive)
        return self._client_message(stage, [
            np.array(holders, dtype=np.uint32), b"".join(sealed),
            commit(self.self_mask_seed, round=self.round, client=me), signature,
            np.array(unusable, dtype=np.uint32), b"".join(commitments),
        ])  # fmt: skip

    def _deal(self, holders: list[int], receive: list[bytes]):
        """``(e_{u,v} for each holder v, the commitments to its two shares, the signature on
        what was dealt)`` (:func:`~fedshield.protocols.secagg.channels.deal`)."""
        if not holders:
            return [], [], bytes(SIGNATURE_BYTES)
        sealed, commitments = deal(
            self.channel_keys, holders, receive, seed=self.self_mask_seed,
            mask_key=self.mask_keys.private_bytes(), threshold=self.threshold,
            round=self.round, sender=self.client_id,
        )  # fmt: skip
        return sealed, commitments, self._sign_deal(holders, sealed, commitments)

    def _sign_deal(self, holders: list[int], sealed: list[bytes], commitments: list[bytes]):
        """This client's signature on its seed commitment and the root over what it dealt."""
        root = merkle.root(dealing.deal_leaves(holders, sealed, commitments))
        seed_commitment = commit(self.self_mask_seed, round=self.round, client=self.client_id)
        statement = dealing.deal_statement(
            self.round, self.run_binding, self.client_id, seed_commitment, root
        )
        return self.roster.sign(self.identity, DEAL_LABEL, statement)

    def _holders_receive_keys(self, holders: list[int], message: wire.Message):
        """``(holders, their receive keys, unusable)``: the receive keys each holder made for
        this client (fields 5 and 6: keys and Merkle paths, in holder order). A key off its
        holder's signed root or not a usable point makes that holder unusable: no shares are
        sealed to it, and the server checks the claim and drops whichever of the two is at
        fault. With fewer than ``t`` usable holders it seals nothing and sits out, but still
        reports them."""
        me, count = self.client_id, len(self.clients)
        keys = _keyed(message, 5, holders)
        paths = _keyed(message, 6, holders, merkle.depth(count) * merkle.HASH_BYTES)
        if keys[me] != self.receive_keys[me].public_bytes:
            raise WrongShape("the server relayed a receive key that is not this client's")
        index = self.clients.index(me)
        usable = {  # its own key it checked above
            h: h == me or receive_key_usable(keys[h], paths[h], root=self.receive_roots[h],
                                             sender=me, index=index, count=count)
            for h in holders
        }  # fmt: skip
        good = [h for h in holders if usable[h]]
        return good, [keys[h] for h in good], [h for h in holders if not usable[h]]

    def _check_signed_keys(self, advertised: list[int], signatures: dict[int, bytes]) -> None:
        """Every relayed key pair and receive-key root must be signed by its site's identity
        (no key of the server's own, no swapped key)."""
        for c in advertised:
            statement = advertisement(self.round, self.session, c, self.channel_public_keys[c],
                                      self.mask_public_keys[c], self.receive_roots[c])  # fmt: skip
            self.roster.verify(c, signatures[c], ADVERTISE_LABEL, statement)

    @handles(SecAggStage.MASKED_INPUT)
    def _masked_input(self, stage: str, message: wire.Message) -> bytes:
        message.require_fields(8)
        shared_keys_survivors = set(message.array(0, dtype="<u4").tolist())  # U_2
        senders = message.array(1, dtype="<u4").tolist()
        deals = parse_relayed(message, 2, len(senders), SEALED_SHARE_BYTES)
        me = self.client_id
        if (
            not shared_keys_survivors <= set(self.channel_public_keys)
            or me not in shared_keys_survivors
            or len(shared_keys_survivors) < self.minimum
        ):
            raise SecAggAbort(f"client {me}: the survivor list is inconsistent or too small")
        self.shared_keys_survivors = shared_keys_survivors  # U_2, remembered for the unmask
        complaints, unsigned = [], []
        for sender, (sealed, dealt) in zip(senders, deals, strict=True):
            if sender not in (*self.neighbours, me) or sender not in shared_keys_survivors:
                raise UnknownSender(f"client {me} got a share from non-neighbour {sender}")
            try:  # a blob that opens came from its sender: only its key could seal it
                self.held_shares[sender] = self._open_shares(sender, sealed, dealt)
            except InvalidShare:
                # only a signed deal is worth this client's key as proof (else the server
                # could forge blobs to collect keys); an unsigned one it reports without one
                signed = dealt.signed(self.roster, round=self.round, session=self.run_binding,
                                      sender=sender, holder=me)  # fmt: skip
                (complaints if signed else unsigned).append(sender)
        # no mask with a peer whose shares were bad: the server drops that peer
        accused = self.accused = set(complaints + unsigned)
        peers = [j for j in self.neighbours if j in shared_keys_survivors and j not in accused]
        masked = self._masked_vector(peers)
        evidence = b"".join(self.receive_keys[s].private_bytes() for s in complaints)
        return self._client_message(stage, [
            np.array(complaints, dtype=np.uint32), evidence, np.array(unsigned, dtype=np.uint32),
            ring.pack(masked, self.bits),
        ])  # fmt: skip

    def _open_shares(self, sender: int, sealed: bytes, dealt: Dealt):
        """Open ``e_{sender,me}``: this client's shares of the sender's ``b`` and ``s^SK``,
        checked against the commitments the sender signed for them."""
        key = share_key(self.receive_keys[sender], self.channel_public_keys[sender],
                        round=self.round, sender=sender, holder=self.client_id)  # fmt: skip
        return open_shares(key, sealed, dealt.commitments, round=self.round, sender=sender,
                           holder=self.client_id, threshold=self.threshold)  # fmt: skip

    def _weighted_levels(self, out: np.ndarray) -> None:
        """Write the weighted, quantized update, the weight's tail values and the range
        statistic into ``out``; :attr:`sent` (what the server's mean will count of this
        update) is worked out only if asked, from the same levels again (``out`` is masked)."""
        config, dim = self.config, self.update.size
        weight = config.integer_weight(self.weight)
        integer = config.weighting == "integer"
        share = 1.0 if integer else ring.weight_fraction(weight, config.weight_bits)
        seed = self.quant_seed
        levels, stat = self.grid.encode(self.update, share, seed=seed, out=out[:dim])
        self._send_later(lambda: self.grid.sent_from(self.update, share, seed=seed))
        tail = dim + config.tail_values
        out[tail:] = stat
        if integer:
            if weight != 1:
                levels *= out.dtype.type(weight)
            out[dim] = weight
            return
        digits = ring.to_digits(weight, quant_bits=config.quant_bits, count=config.weight_digits)
        out[dim : dim + len(digits)] = digits
        out[dim + len(digits)] = 1  # counts the clients in the sum

    def _masked_vector(self, peers: list[int]) -> np.ndarray:
        """``y_u``: the weighted, quantized update and the weight, plus ``PRG(b_u)`` and the
        pairwise masks with ``peers``, in the ring."""
        config = self.config
        length = self.update.size + config.tail_values + self.grid.stat_values
        masked = np.empty(length, dtype=ring_dtype(self.bits))
        self._weighted_levels(masked)
        scratch = mask_scratch(length, self.bits)
        add_mask(masked, self.self_mask_seed, scratch=scratch)
        for j in peers:
            add_pairwise_mask(masked, self.mask_keys, self.mask_public_keys[j], round=self.round,
                              me=self.client_id, peer=j, params=self.params,
                              scratch=scratch)  # fmt: skip
        masked &= masked.dtype.type((1 << self.bits) - 1)
        return masked

    @handles(SecAggStage.CONSISTENCY)
    def _consistency(self, stage: str, message: wire.Message) -> bytes:
        """Sign the masked-input survivors ``U_3`` the server announces, once: they must lie
        within the ``U_2`` this client masked against, include it, and be enough to finish."""
        message.require_fields(1)
        survivors = set(message.array(0, dtype="<u4").tolist())  # U_3
        me = self.client_id
        if (
            not survivors <= self.shared_keys_survivors - self.accused  # no mask with those
            or me not in survivors
            or len(survivors) < max(self.minimum, self.quorum)
        ):
            raise SecAggAbort(
                f"client {me}: the announced survivors are not a subset of the set it masked "
                f"against, omit it, or are fewer than the quorum of {self.quorum}"
            )
        self.masked_input_survivors = survivors
        statement = survivor_statement(self.round, self.run_binding, survivors)
        return self._client_message(
            stage, [self.roster.sign(self.identity, CONSISTENCY_LABEL, statement)]
        )

    @handles(SecAggStage.UNMASK)
    def _unmask(self, stage: str, message: wire.Message) -> bytes:
        """Reveal shares for the ``U_3`` this client signed, once at least a quorum of its
        members signed the same set: seed shares of its members, key shares of the rest of
        ``U_2``. The server's word on who dropped is not taken."""
        message.require_fields(2)
        signers = message.array(0, dtype="<u4").tolist()
        signatures = _keyed(message, 1, signers, SIGNATURE_BYTES)
        me, survivors = self.client_id, self.masked_input_survivors
        if len(set(signers)) != len(signers) or not set(signers) <= survivors:
            raise SecAggAbort(f"client {me}: consistency signatures from outside the survivors")
        if len(signers) < self.quorum:
            raise SecAggAbort(
                f"client {me}: {len(signers)} sites signed the survivor set, the quorum is "
                f"{self.quorum}"
            )
        statement = survivor_statement(self.round, self.run_binding, survivors)
        for signer, signature in signatures.items():
            try:
                self.roster.verify(signer, signature, CONSISTENCY_LABEL, statement)
            except InvalidMessage as exc:  # another survivor set, or a forgery: refuse
                raise SecAggAbort(f"client {me}: {exc} (on the survivor set)") from None
        dropped = self.shared_keys_survivors - survivors  # U_2 - U_3, in this client's view
        seed_owners = sorted(j for j in survivors if j in self.held_shares)
        key_owners = sorted(j for j in dropped if j in self.held_shares)
        return self._client_message(
            stage,
            [
                np.array(seed_owners, dtype=np.uint32),
                b"".join(self.held_shares[j][0].to_bytes() for j in seed_owners),
                np.array(key_owners, dtype=np.uint32),
                b"".join(self.held_shares[j][1].to_bytes() for j in key_owners),
            ],
        )

    @handles(SecAggStage.EXPEL)
    def _expel(self, stage: str, message: wire.Message) -> bytes:
        """Only when the server proves that a peer this client masked with dealt garbage
        shares: check the proof, then reveal the pairwise mask seed with that peer
        (:mod:`~fedshield.protocols.secagg.expulsion`)."""
        cheaters, seeds = reveal_pair_seeds(self, message)
        return self._client_message(stage, [np.array(cheaters, dtype=np.uint32), b"".join(seeds)])
