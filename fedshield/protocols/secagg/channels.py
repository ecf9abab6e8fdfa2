"""How SecAgg+ shares travel between two clients through the server, so that a complaint can
be checked. The protocol, its threat model and the legend: :mod:`fedshield.protocols.secagg`.

Each client advertises, besides its channel key ``c_u``, one fresh *receive* key ``r_{v,u}``
per listed peer ``u``, and signs the Merkle root over them with its other round keys. A
sender ``u`` checks each holder's receive key (its path to the holder's signed root, a usable
point) and seals its shares for holder ``v``
under ``HKDF(X25519(c_u, r_{v,u}))`` with a label naming the direction ``u -> v``, and signs
what it dealt (:mod:`~fedshield.protocols.secagg.dealing`: one signature over every blob's
hash and the commitments to the shares in it). A blob that opens came from its sender (no one
else holds the key), so on the honest path no holder checks that signature: the work is done
only when something is wrong. A holder whose blob does not open, or whose shares miss their
commitments, checks the sender's signature: if it holds, the holder reveals ``r_{v,u}``'s
private key, which opens nothing but this one blob (it serves no other pair and no other
direction), so the server opens it too and judges: sound shares drop the accuser, bad ones
the sender (its signature proves it dealt that blob). If the signature does not hold, the
holder reveals nothing (a server could otherwise forge blobs to collect keys) and the server
checks the signature itself. A sender that finds a holder's receive
key unusable seals nothing to it and says so; the server checks that claim. Whoever is at
fault is dropped, and the round goes on.
"""

from __future__ import annotations

import struct

from fedshield.crypto import merkle, shamir
from fedshield.crypto.keys import KeyPair, open_share, seal_share, validate_public_key
from fedshield.errors import InvalidShare, WrongShape
from fedshield.protocols.secagg.common import PAIR
from fedshield.protocols.secagg.dealing import Secret, commitment_to, opens, share_commitments

__all__ = [
    "SEALED_SHARE_BYTES",
    "complaint_holds",
    "deal",
    "open_shares",
    "receive_key_usable",
    "receive_leaves",
    "seal_shares",
    "share_key",
]

_SHARE_PLAIN = PAIR.size + 2 * shamir.SHARE_BYTES
# AES-GCM: 12-byte nonce, then (sender, receiver) and two shares, then the 16-byte tag.
SEALED_SHARE_BYTES = 12 + _SHARE_PLAIN + 16


def receive_leaves(peers: list[int], keys: list[bytes]) -> list[bytes]:
    """The Merkle leaves of the receive keys a client made, one per listed peer, in order (it
    signs their root: :func:`~fedshield.protocols.secagg.common.advertisement`)."""
    return [
        merkle.leaf_hash(b"receive" + struct.pack("<I", peer) + key)
        for peer, key in zip(peers, keys, strict=True)
    ]


def receive_key_usable(key: bytes, path: bytes, *, root: bytes, sender: int, index: int,
                       count: int) -> bool:  # fmt: skip
    """Whether ``key`` is the receive key its holder made for ``sender`` (leaf ``index`` of
    ``count`` under the ``root`` the holder signed) and a usable point (a sender checks each
    before sealing; the server, which hashed every key into its root itself, only when
    a sender says no)."""
    try:
        validate_public_key(key)
        leaf = receive_leaves([sender], [key])[0]
        return merkle.root_from_path(leaf, index, count, path) == root
    except (WrongShape, ValueError):
        return False


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


def deal(
    channel_keys: KeyPair, holders: list[int], receive: list[bytes], *, seed: bytes,
    mask_key: bytes, threshold: int, round: int, sender: int,
) -> tuple[list[bytes], list[bytes]]:  # fmt: skip
    """Shamir-share ``seed`` (``b_u``) and ``mask_key`` (``s_u^SK``) among ``holders`` and seal
    each holder's pair to the receive key it made for the sender: ``(sealed blobs, the
    commitments to each holder's two shares)`` (the sender signs them:
    :func:`~fedshield.protocols.secagg.dealing.deal_leaves`)."""
    xs = [h + 1 for h in holders]
    seed_shares = shamir.split(seed, threshold=threshold, xs=xs)
    key_shares = shamir.split(mask_key, threshold=threshold, xs=xs)
    sealed, commitments = [], []
    for h, public, pair in zip(holders, receive, zip(seed_shares, key_shares, strict=True),
                               strict=True):  # fmt: skip
        key = share_key(channel_keys, public, round=round, sender=sender, holder=h)
        sealed.append(seal_shares(key, *pair, round=round, sender=sender, holder=h))
        commitments.append(share_commitments(pair, round=round, owner=sender, holder=h))
    return sealed, commitments


def open_shares(
    key: bytes, sealed: bytes, commitments: bytes, *, round: int, sender: int, holder: int,
    threshold: int,
) -> tuple[shamir.Share, shamir.Share]:  # fmt: skip
    """Open :func:`seal_shares`'s blob and check its shares are what an honest sender deals:
    addressed to this pair, at the holder's point, at the round's threshold, of a 32-byte
    secret, and matching the ``commitments`` the sender signed for them.

    Raises:
        InvalidShare: the blob does not open, or its shares are malformed or miss their
            commitments.
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
    for share, secret in zip(shares, Secret, strict=True):
        if not opens(share, commitment_to(secret, commitments), round=round, owner=sender,
                     holder=holder, secret=secret, threshold=threshold):  # fmt: skip
            raise InvalidShare(
                "a share at another point, threshold or length, or that misses the commitment "
                "its sender signed"
            )
    return shares


def complaint_holds(
    revealed: bytes, receive_public: bytes, sender_channel_public: bytes, sealed: bytes,
    commitments: bytes, *, round: int, sender: int, holder: int, threshold: int,
) -> bool:  # fmt: skip
    """Judge ``holder``'s complaint about ``sender``'s sealed blob from the receive key it
    revealed: ``True`` if the blob is bad (the sender is at fault), ``False`` if it opens to
    sound shares that match their ``commitments`` (the complaint is false).

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
        open_shares(key, sealed, commitments, round=round, sender=sender, holder=holder,
                    threshold=threshold)  # fmt: skip
    except InvalidShare:
        return True
    return False
