"""What the server does at the reveal: rebuild each secret the unmasking needs from the shares
clients reveal at ``unmask`` (each checked against its dealer's commitment on arrival; robust
to a dealer's inconsistent shares), find the dealers whose shares decode to nothing they
committed to (:mod:`~fedshield.protocols.secagg.expulsion`), and take the masks out of the sum
(its decoding: :meth:`~fedshield.protocols.ranges.Grid.decode_checked`). The protocol, its
threat model and the legend from the paper's notation to these names:
:mod:`fedshield.protocols.secagg`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedshield.crypto import ring, shamir
from fedshield.crypto.keys import KeyPair
from fedshield.crypto.prg import add_mask, mask_scratch
from fedshield.errors import InvalidShare, NotEnoughShares, SecAggAbort, WrongShape
from fedshield.protocols.secagg.common import add_pair_seed, add_pairwise_mask, commit

if TYPE_CHECKING:
    from fedshield.protocols.secagg.server import SecAggServer

__all__ = ["decode_secret", "masked_with", "recover_secrets", "remove_masks", "secret_check"]


def decode_secret(shares: list[shamir.Share], check, *, threshold: int) -> tuple[bytes, list[int]]:
    """The secret that ``check`` accepts (the owner's commitment or public key) and the
    holders (``x - 1``) whose shares disagree with it. Consistent shares: one interpolation
    through ``t`` of them. Otherwise Reed-Solomon decoding of all of them
    (:func:`~fedshield.crypto.shamir.decode`) corrects up to ``(m - t) // 2`` wrong ones in one
    pass; a share whose header claims another threshold is wrong too.

    Raises:
        SecAggAbort: too few shares, or more wrong ones than they can correct.
    """
    wrong = [s.x - 1 for s in shares if s.threshold != threshold]
    shares = [s for s in shares if s.threshold == threshold]
    if len(shares) < threshold:
        raise SecAggAbort(f"{len(shares)} shares, the threshold is {threshold}")
    try:
        secret = shamir.reconstruct(shares[:threshold])
        if check(secret):
            return secret, wrong
    except (InvalidShare, WrongShape):
        pass
    try:
        secret, corrected = shamir.decode(shares)
    except (InvalidShare, NotEnoughShares) as exc:
        raise SecAggAbort(f"the revealed shares cannot be decoded ({exc})") from None
    if not check(secret):
        raise SecAggAbort("the revealed shares decode to no secret matching the owner's commitment")
    return secret, sorted(wrong + [x - 1 for x in corrected])


def secret_check(
    secret: str, *, owner: int, round: int, seed_commitment: bytes, mask_public_key: bytes
):  # fmt: skip
    """What ``owner``'s rebuilt ``secret`` must match: its commitment to its self-mask seed
    (``"seed"``), or its signed mask public key (``"key"``)."""
    if secret == "seed":
        return lambda value: commit(value, round=round, client=owner) == seed_commitment
    return lambda value: KeyPair.from_private_bytes(value).public_bytes == mask_public_key


def masked_with(server: SecAggServer, peer: int) -> list[int]:
    """The survivors whose masked input holds a pairwise mask with ``peer``: its neighbours
    that masked (those that complained about ``peer`` left it out)."""
    s = server
    return [i for i in s.graph[peer] if i in s.masked and peer not in s.complaints.get(i, ())]


def recover_secrets(server: SecAggServer) -> None:
    """At ``unmask``'s close: rebuild each survivor's self-mask seed (``server.seeds``), then
    each dropped client's mask key that some survivor's mask needs
    (``server.dropped_mask_keys``). A dealer whose shares decode to no secret it committed to
    goes to ``server.cheaters`` (with the secret's name); a cheating survivor's masked input
    leaves the sum. Both, and a dropped client whose key has fewer than ``t`` shares (its
    neighbours dropped, or it dealt blobs that did not open), go to
    ``server.unkeyed``: their masks leave the sum through the pairwise seeds its neighbours
    reveal at ``expel``.

    Raises:
        SecAggAbort: fewer than ``t`` shares of a survivor's seed.
    """
    s = server
    for c in sorted(s.masked):
        seed = _recovered(s, c, "seed", s.self_mask_seed_shares.get(c, []))
        if seed is not None:
            s.seeds[c] = seed
    for u in sorted(s.cheaters):
        s.masked_sum -= ring.unpack(s.masked.pop(u), s.length, s.bits)
        s.alive.discard(u)
    for j in sorted(set(s.shared_keys_survivors) - set(s.masked) - set(s.cheaters)):
        shares = s.mask_key_shares.get(j, [])
        if not masked_with(s, j):
            continue
        key = _recovered(s, j, "key", shares) if len(shares) >= s.threshold else None
        if key is None:
            s.unkeyed.add(j)
        else:
            s.dropped_mask_keys[j] = KeyPair.from_private_bytes(key)
    s.unkeyed.update(s.cheaters)


def _recovered(s: SecAggServer, owner: int, secret: str, shares: list[shamir.Share]):
    """``owner``'s ``secret``, or ``None`` when its shares prove it a cheater."""
    if len(shares) < s.threshold:
        raise SecAggAbort(
            f"{len(shares)} shares of client {owner}'s {secret} came back, the threshold is "
            f"{s.threshold}"
        )
    check = secret_check(secret, owner=owner, round=s.round, seed_commitment=s.commitments[owner],
                         mask_public_key=s.mask_public_keys[owner])  # fmt: skip
    try:
        value, wrong = decode_secret(shares, check, threshold=s.threshold)
    except SecAggAbort:  # every share matched its signed commitment: the dealer is at fault
        s.cheaters[owner] = secret
        return None
    if wrong:  # shares that matched their commitments, off the dealer's polynomial
        s.bad_dealers.add(owner)
    return value


def remove_masks(server: SecAggServer, total: np.ndarray) -> None:
    """Take the survivors' self masks, their pairwise masks with dropped clients and with
    expelled cheaters out of ``total``, from what :func:`recover_secrets` rebuilt and the
    pairwise seeds survivors revealed at ``expel``.

    Raises:
        SecAggAbort: a survivor that masked with an unkeyed client did not reveal that seed.
    """
    s = server
    scratch = mask_scratch(s.length, s.bits)
    for c in sorted(s.masked):
        add_mask(total, s.seeds[c], subtract=True, scratch=scratch)
    for j, keys in sorted(s.dropped_mask_keys.items()):
        for i in masked_with(s, j):  # i added sgn(i, j)·mask(i, j); take it away
            add_pairwise_mask(total, keys, s.mask_public_keys[i], round=s.round, me=i, peer=j,
                              params=s.params, scratch=scratch, undo=True)  # fmt: skip
    for u in sorted(s.unkeyed):
        for i in masked_with(s, u):
            if (i, u) not in s.pair_seeds:
                raise SecAggAbort(f"client {i} did not reveal its mask with client {u}")
            add_pair_seed(total, s.pair_seeds[i, u], me=i, peer=u, scratch=scratch, undo=True)
