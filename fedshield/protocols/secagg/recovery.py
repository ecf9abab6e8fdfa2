"""What the server does at the reveal: rebuild each secret the unmasking needs from the shares
clients reveal at ``unmask`` (each checked against its dealer's commitment on arrival; robust
to a dealer's inconsistent shares), find the dealers whose shares decode to nothing they
committed to (:mod:`~fedshield.protocols.secagg.expulsion`), and take the masks out of the sum
(its decoding: :meth:`~fedshield.protocols.ranges.Grid.decode_checked`). The protocol, its
threat model and the legend from the paper's notation to these names:
:mod:`fedshield.protocols.secagg`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from fedshield.crypto import ring, shamir
from fedshield.crypto.keys import KeyPair
from fedshield.crypto.prg import add_mask, mask_scratch
from fedshield.errors import InvalidShare, NotEnoughShares, SecAggAbort, WrongShape
from fedshield.protocols.secagg.common import add_pair_seed, add_pairwise_mask, commit
from fedshield.protocols.secagg.dealing import Secret

if TYPE_CHECKING:
    from fedshield.protocols.secagg.server import SecAggServer

__all__ = ["decode_secret", "masked_with", "recover_secrets", "remove_masks", "secret_check"]


def decode_secret(shares: list[shamir.Share], check, *, threshold: int) -> tuple[bytes, list[int]]:
    """The secret that ``check`` accepts (the owner's commitment or public key) and the
    holders (``x - 1``) whose shares disagree with it. Consistent shares: one interpolation
    through ``t`` of them. Otherwise Reed-Solomon decoding of all of them
    (:func:`~fedshield.crypto.shamir.decode`) corrects up to ``(m - t) // 2`` wrong ones in one
    pass. Callers pass shares already checked to be at ``threshold``.

    Raises:
        SecAggAbort: too few shares, or more wrong ones than they can correct.
    """
    if len(shares) < threshold:
        raise SecAggAbort(f"{len(shares)} shares, the threshold is {threshold}")
    try:
        secret = shamir.reconstruct(shares[:threshold])
        if check(secret):
            return secret, []
    except (InvalidShare, WrongShape):
        pass
    try:
        secret, corrected = shamir.decode(shares)
    except (InvalidShare, NotEnoughShares) as exc:
        raise SecAggAbort(f"the revealed shares cannot be decoded ({exc})") from None
    if not check(secret):
        raise SecAggAbort("the revealed shares decode to no secret matching the owner's commitment")
    return secret, sorted(x - 1 for x in corrected)


def secret_check(
    secret: Secret, *, owner: int, round: int, committed: bytes
) -> Callable[[bytes], bool]:  # fmt: skip
    """What ``owner``'s rebuilt ``secret`` must match: ``committed``, its commitment to its
    self-mask seed, or its signed mask public key."""
    if secret == Secret.SEED:
        return lambda value: commit(value, round=round, client=owner) == committed
    return lambda value: KeyPair.from_private_bytes(value).public_bytes == committed


def masked_with(server: SecAggServer, peer: int) -> list[int]:
    """The survivors whose masked input holds a pairwise mask with ``peer``: its neighbours
    that masked (those that complained about ``peer`` left it out)."""
    s = server
    return [i for i in s.graph[peer] if i in s.masked and peer not in s.complaints.get(i, ())]


def recover_secrets(server: SecAggServer) -> None:
    """At ``unmask``'s close: rebuild each survivor's self-mask seed (``server.seeds``), then
    each dropped client's mask key that some survivor's mask needs
    (``server.dropped_mask_keys``). A dealer whose shares decode to no secret it committed to
    goes to ``server.cheaters`` (with the secret); a cheating survivor's masked input leaves
    the sum. Both, and a dropped client with fewer than ``t`` shares of its key back (its
    holders dropped, or it dealt blobs that did not open), go to ``server.unkeyed``: their
    masks leave the sum through the pairwise seeds their neighbours reveal at ``expel``.

    Raises:
        SecAggAbort: fewer than ``t`` shares of a survivor's seed came back.
    """
    s = server
    for c in sorted(s.masked):
        shares = s.self_mask_seed_shares.get(c, [])
        seed = _recovered(s, c, Secret.SEED, shares)
        if seed is not None:
            s.seeds[c] = seed
        elif c not in s.cheaters:
            raise SecAggAbort(
                f"{len(shares)} shares of client {c}'s seed came back, the threshold is "
                f"{s.threshold}"
            )
    for u in sorted(s.cheaters):
        s.masked_sum -= ring.unpack(s.masked.pop(u), s.length, s.bits)
        s.alive.discard(u)
    for j in sorted(set(s.shared_keys_survivors) - set(s.masked) - set(s.cheaters)):
        if masked_with(s, j):
            key = _recovered(s, j, Secret.KEY, s.mask_key_shares.get(j, []))
            if key is None:
                s.unkeyed.add(j)
            else:
                s.dropped_mask_keys[j] = KeyPair.from_private_bytes(key)
    s.unkeyed.update(s.cheaters)


def _recovered(s: SecAggServer, owner: int, secret: Secret, shares: list[shamir.Share]):
    """``owner``'s ``secret``, or ``None``: fewer than ``t`` shares came back, or they prove
    the owner a cheater (recorded in ``s.cheaters``)."""
    if len(shares) < s.threshold:
        return None
    committed = s.commitments[owner] if secret == Secret.SEED else s.mask_public_keys[owner]
    check = secret_check(secret, owner=owner, round=s.round, committed=committed)
    try:
        value, wrong = decode_secret(shares, check, threshold=s.threshold)
    except SecAggAbort:  # every share is what the dealer dealt: the dealer is at fault
        s.cheaters[owner] = secret
        return None
    if wrong:  # shares that matched their commitments, off the dealer's polynomial
        s.bad_dealers.add(owner)
    return value


def remove_masks(server: SecAggServer, total: np.ndarray) -> None:
    """Take the survivors' self masks, their pairwise masks with dropped clients and with
    expelled cheaters out of ``total``, from what :func:`recover_secrets` rebuilt and the
    pairwise seeds survivors revealed at ``expel`` (all there: the stage's close checks).
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
            add_pair_seed(total, s.pair_seeds[i, u], me=i, peer=u, scratch=scratch, undo=True)
