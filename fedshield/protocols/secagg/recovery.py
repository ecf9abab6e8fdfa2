"""Rebuilding a secret from the shares clients reveal at ``unmask``, robust to forgeries.
The protocol, its threat model and the legend from the paper's notation to these names:
:mod:`fedshield.protocols.secagg`.
"""

from __future__ import annotations

from fedshield.crypto import shamir
from fedshield.errors import InvalidShare, NotEnoughShares, SecAggAbort, WrongShape

__all__ = ["decode_secret"]


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
