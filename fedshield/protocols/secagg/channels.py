"""How SecAgg+ shares travel between two clients through the server, so that a complaint can
be checked. The protocol, its threat model and the legend: :mod:`fedshield.protocols.secagg`.

Each client advertises, besides its channel key ``c_u``, one fresh *receive* key ``r_{v,u}``
per listed peer ``u`` (signed with its identity, like its other keys). A sender ``u`` checks
each holder's receive key (signed, a usable point) and seals its shares for holder ``v``
under ``HKDF(X25519(c_u, r_{v,u}))`` with a label naming the direction ``u -> v``, and signs
the sealed blob. A blob that opens came from its sender (no one else holds the key), so on
the honest path nobody checks these signatures: the work is done only when something is
wrong. A holder whose blob does not open checks the sender's signature: if it holds, the
holder reveals ``r_{v,u}``'s private key, which opens nothing but this one blob (it serves no
other pair and no other direction), so the server opens it too and judges: sound shares drop
the accuser, bad ones the sender (its signature proves it sent that blob). If the signature
does not hold, the holder reveals nothing (a server could otherwise forge blobs to collect
keys) and the server checks the signature itself. A sender that finds a holder's receive
key unusable seals nothing to it and says so; the server checks that claim. Whoever is at
fault is dropped, and the round goes on.
"""

from __future__ import annotations

import struct

from fedshield.crypto import shamir
from fedshield.crypto.keys import KeyPair, open_share, seal_share, validate_public_key
from fedshield.errors import InvalidMessage, InvalidShare, WrongShape
from fedshield.protocols.roster import Roster
from fedshield.protocols.secagg.common import PAIR

__all__ = [
    "RECEIVE_LABEL",
    "SEALED_LABEL",
    "SEALED_SHARE_BYTES",
    "blob_signed",
    "complaint_holds",
    "open_shares",
    "receive_key_usable",
    "receive_statement",
    "seal_shares",
    "sealed_statement",
    "share_key",
]

RECEIVE_LABEL = b"secagg/receive-key"  # a holder's signature on its receive key for a sender
SEALED_LABEL = b"secagg/sealed-shares"  # a sender's signature on the blob it sealed to a holder
_SHARE_PLAIN = PAIR.size + 2 * shamir.SHARE_BYTES
# AES-GCM: 12-byte nonce, then (sender, receiver) and two shares, then the 16-byte tag.
SEALED_SHARE_BYTES = 12 + _SHARE_PLAIN + 16


def receive_statement(round: int, session: bytes, holder: int, sender: int, key: bytes) -> bytes:
    """What ``holder`` signs for the key it receives ``sender``'s shares under; ``session``:
    the session binding and the holder's fresh channel key (so it holds for this run only)."""
    return struct.pack("<III", round, holder, sender) + session + key


def sealed_statement(round: int, session: bytes, sender: int, holder: int, sealed: bytes) -> bytes:
    """What ``sender`` signs for the shares it sealed to ``holder``; ``session``: the session
    binding and the graph seed, derived from this run's fresh keys. A blob signed in another
    run of the same round therefore counts as unsigned, and no holder reveals a key for it
    (a reviewer replayed one: every holder revealed its key, and the server unmasked the
    victim)."""
    return struct.pack("<III", round, sender, holder) + session + sealed


def receive_key_usable(
    roster: Roster, key: bytes, signature: bytes, *, round: int, session: bytes, holder: int,
    sender: int,
) -> bool:  # fmt: skip
    """Whether ``holder`` signed ``key`` as its receive key for ``sender`` and it is a usable
    point (a sender checks each before sealing; the server, only when a sender says no)."""
    try:
        validate_public_key(key)
        roster.verify(holder, signature, RECEIVE_LABEL,
                      receive_statement(round, session, holder, sender, key))  # fmt: skip
    except InvalidMessage:
        return False
    return True


def blob_signed(
    roster: Roster, sealed: bytes, signature: bytes, *, round: int, session: bytes, sender: int,
    holder: int,
) -> bool:  # fmt: skip
    """Whether ``sender`` signed the blob it sealed to ``holder`` (a holder checks it only
    for a blob that does not open, before revealing its key; the server, only when told)."""
    try:
        roster.verify(sender, signature, SEALED_LABEL,
                      sealed_statement(round, session, sender, holder, sealed))  # fmt: skip
    except InvalidMessage:
        return False
    return True


def share_key(own: KeyPair, peer_public: bytes, *, round: int, sender: int, holder: int) -> bytes:
    """The AES key of the shares ``sender`` seals to ``holder`` (one direction only): the
    sender calls it with its channel key and the holder's receive key, the holder (or a judge
    holding the revealed receive key) with the receive key and the sender's channel key."""
    info = b"fedshield/secagg/share-key" + struct.pack("<III", round, sender, holder)
    return own.agree(peer_public, info=info)


def seal_shares(
    key: bytes, seed_share: shamir.Share, key_share: shamir.Share, *, round: int, sender: int,
    holder: int,
) -> bytes:  # fmt: skip
    """``e_{u,v}``: the holder's shares of the sender's self-mask seed and mask key, sealed."""
    plaintext = PAIR.pack(sender, holder) + seed_share.to_bytes() + key_share.to_bytes()
    return seal_share(key, plaintext, round=round, sender=sender, receiver=holder)


def open_shares(
    key: bytes, sealed: bytes, *, round: int, sender: int, holder: int, threshold: int
) -> tuple[shamir.Share, shamir.Share]:
    """Open :func:`seal_shares`'s blob and check its shares are what an honest sender deals:
    addressed to this pair, at the holder's point, at the round's threshold, of a 32-byte
    secret.

    Raises:
        InvalidShare: the blob does not open, or its shares are malformed.
    """
    plaintext = open_share(key, sealed, round=round, sender=sender, receiver=holder)
    if len(plaintext) != _SHARE_PLAIN or PAIR.unpack_from(plaintext) != (sender, holder):
        raise InvalidShare("shares addressed to another pair")
    o = PAIR.size
    try:
        shares = (
            shamir.Share.from_bytes(plaintext[o : o + shamir.SHARE_BYTES]),
            shamir.Share.from_bytes(plaintext[o + shamir.SHARE_BYTES :]),
        )
    except (ValueError, WrongShape) as exc:
        raise InvalidShare(f"malformed share ({exc})") from None
    for share in shares:
        if (share.x, share.threshold, share.secret_len) != (holder + 1, threshold, 32):
            raise InvalidShare("a share at another point, threshold or length")
    return shares


def complaint_holds(
    revealed: bytes, receive_public: bytes, sender_channel_public: bytes, sealed: bytes, *,
    round: int, sender: int, holder: int, threshold: int,
) -> bool:  # fmt: skip
    """Judge ``holder``'s complaint about ``sender``'s sealed blob from the receive key it
    revealed: ``True`` if the blob is bad (the sender is at fault), ``False`` if it opens to
    sound shares (the complaint is false).

    Raises:
        InvalidShare: ``revealed`` is not the private half of the receive key the holder
            signed (the complaint proves nothing: the accuser is at fault).
    """
    try:
        receive = KeyPair.from_private_bytes(revealed)
    except (InvalidShare, ValueError):
        raise InvalidShare("the revealed receive key is not an X25519 private key") from None
    if receive.public_bytes != receive_public:
        raise InvalidShare("the revealed receive key is not the one the accuser signed")
    key = share_key(receive, sender_channel_public, round=round, sender=sender, holder=holder)
    try:
        open_shares(key, sealed, round=round, sender=sender, holder=holder, threshold=threshold)
    except InvalidShare:
        return True
    return False
