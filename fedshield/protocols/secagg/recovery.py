"""What the server does at the reveal: rebuild a secret from the shares clients reveal at
``unmask`` (robust to forgeries) and take the masks out of the sum (its decoding:
:meth:`~fedshield.protocols.ranges.Grid.decode_checked`). The protocol, its threat model
and the legend from the paper's notation to these names: :mod:`fedshield.protocols.secagg`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedshield.crypto import shamir
from fedshield.crypto.keys import KeyPair
from fedshield.crypto.prg import add_mask, mask_scratch
from fedshield.errors import InvalidShare, NotEnoughShares, SecAggAbort, WrongShape
from fedshield.protocols.secagg.common import add_pairwise_mask, commit

if TYPE_CHECKING:
    from fedshield.protocols.secagg.server import SecAggServer

__all__ = ["decode_secret", "remove_masks"]


def decode_secret(shares: list[shamir.Share], check, *, threshold: int) -> tuple[bytes, list[int]]:
    """The secret that ``check`` accepts (the owner's commitment or public key) and the
    holders (``x - 1``) whose shares were forged. Honest shares: one interpolation through
    ``t`` of them. Otherwise Reed-Solomon decoding of all of them
    (:func:`~fedshield.crypto.shamir.decode`) corrects up to ``(m - t) // 2`` forgeries in one
    pass; a share whose header claims another threshold is a forgery too.

    Raises:
        SecAggAbort: too few shares, or more forgeries than they can correct.
    """
    forged = [s.x - 1 for s in shares if s.threshold != threshold]
    shares = [s for s in shares if s.threshold == threshold]
    if len(shares) < threshold:
        raise SecAggAbort(f"{len(shares)} shares, the threshold is {threshold}")
    try:
        secret = shamir.reconstruct(shares[:threshold])
        if check(secret):
            return secret, forged
    except (InvalidShare, WrongShape):
        pass
    try:
        secret, wrong = shamir.decode(shares)
    except (InvalidShare, NotEnoughShares) as exc:
        raise SecAggAbort(f"the revealed shares cannot be decoded ({exc})") from None
    if not check(secret):
        raise SecAggAbort("the revealed shares decode to no secret matching the owner's commitment")
    return secret, sorted(forged + [x - 1 for x in wrong])


def _verified_secret(server: SecAggServer, owner: int, shares: list[shamir.Share], check):
    """:func:`decode_secret` at the round's threshold, remembering the inconsistent
    (owner, holder) pairs on ``server``."""
    secret, holders = decode_secret(shares, check, threshold=server.threshold)
    server.inconsistent.update((owner, h) for h in holders)
    return secret


def remove_masks(server: SecAggServer, total: np.ndarray, survivors: list[int]) -> None:
    """Take the survivors' self masks and their pairwise masks with dropped clients out of
    ``total``, from the secrets the shares revealed to ``server`` reconstruct."""
    s = server
    scratch = mask_scratch(s.length, s.bits)
    for c in survivors:
        seed = _verified_secret(
            s, c, s.self_mask_seed_shares.get(c, []),
            lambda b, c=c: commit(b, round=s.round, client=c) == s.commitments[c],
        )  # fmt: skip
        add_mask(total, seed, subtract=True, scratch=scratch)
    for j in sorted(set(s.shared_keys_survivors) - set(survivors)):
        # Survivors that complained about j left their mask with j out of their input.
        paired = [i for i in s.graph[j] if i in s.masked and j not in s.complaints.get(i, ())]
        if not paired:
            continue
        secret = _verified_secret(
            s, j, s.mask_key_shares.get(j, []),
            lambda b, j=j: KeyPair.from_private_bytes(b).public_bytes == s.mask_public_keys[j],
        )  # fmt: skip
        dropped_mask_keys = KeyPair.from_private_bytes(secret)
        for i in paired:  # i added sgn(i, j)·mask(i, j); take it away
            add_pairwise_mask(total, dropped_mask_keys, s.mask_public_keys[i], round=s.round,
                              me=i, peer=j, params=s.params, scratch=scratch,
                              undo=True)  # fmt: skip
