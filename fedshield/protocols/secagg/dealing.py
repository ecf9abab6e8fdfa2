"""What a SecAgg+ sender commits to when it deals its shares, so that shares revealed later can
be checked one by one, and a sender whose shares lie on no committed polynomial is caught.
The protocol, its threat model and the legend: :mod:`fedshield.protocols.secagg`.

For each holder ``v`` the sender ``u`` deals a sealed blob holding ``v``'s shares of ``b_u``
and of ``s_u^SK`` (:mod:`~fedshield.protocols.secagg.channels`), and a hash commitment to
each of the two shares. A Merkle leaf per holder binds the holder, the blob's hash and the two
commitments; ``u`` signs one statement per round: the commitment to ``b_u`` and the Merkle
root (:mod:`fedshield.crypto.merkle`). The server checks that signature on arrival and relays
to each holder its blob, commitments and path. So

- a holder whose blob does not open, or whose shares miss their commitments, can prove it
  (its complaint reveals the key that opens that blob only);
- a share revealed at ``unmask`` that misses its commitment is forged by its holder, and is
  dropped (the holder is named);
- ``t`` or more shares that match their signed commitments yet decode to no secret matching
  ``u``'s commitment (or its signed mask key) prove that ``u`` dealt garbage: every client
  can check that proof, and the server expels ``u``
  (:mod:`~fedshield.protocols.secagg.expulsion`).

The commitments hide the shares: fewer than ``t`` shares leave each other share a one-to-one
function of a 256-bit secret.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np

from fedshield import wire
from fedshield.crypto import merkle, shamir
from fedshield.crypto.identity import SIGNATURE_BYTES
from fedshield.errors import InvalidMessage, WrongShape
from fedshield.protocols.ids import StrEnum
from fedshield.protocols.roster import Roster

__all__ = [
    "COMMITMENTS_BYTES",
    "DEAL_LABEL",
    "SECRET_BYTES",
    "Dealt",
    "Secret",
    "commitment_to",
    "deal_leaves",
    "deal_statement",
    "dealt_leaf",
    "opens",
    "parse_relayed",
    "relayed_fields",
    "share_commitment",
    "share_commitments",
    "verified_deals",
]

DEAL_LABEL = b"secagg/dealt-shares"  # a sender's signature on its seed commitment and root
COMMITMENTS_BYTES = 2 * 32  # per holder: to its share of b_u, then to its share of s_u^SK
SECRET_BYTES = 32  # b_u and s_u^SK alike


class Secret(StrEnum):
    """The two secrets every client shares, in the order its commitments list them."""

    SEED = "seed"  # b_u, the self-mask seed
    KEY = "key"  # s_u^SK, the mask-agreement secret key


def share_commitment(
    share: shamir.Share, *, round: int, owner: int, holder: int, secret: Secret
) -> bytes:  # fmt: skip
    """SHA-256 commitment to ``holder``'s share of ``owner``'s ``secret``."""
    label = b"fedshield/secagg/share/" + secret.encode() + struct.pack("<III", round, owner, holder)
    return hashlib.sha256(label + share.to_bytes()).digest()


def share_commitments(shares, *, round: int, owner: int, holder: int) -> bytes:
    """The two commitments of a holder's ``(seed share, key share)``, concatenated."""
    return b"".join(
        share_commitment(share, round=round, owner=owner, holder=holder, secret=secret)
        for share, secret in zip(shares, Secret, strict=True)
    )


def commitment_to(secret: Secret, commitments: bytes) -> bytes:
    """The commitment to ``secret``'s share among a holder's two (:func:`share_commitments`)."""
    at = list(Secret).index(secret) * 32
    return commitments[at : at + 32]


def opens(
    share: shamir.Share, commitment: bytes, *, round: int, owner: int, holder: int,
    secret: Secret, threshold: int,
) -> bool:  # fmt: skip
    """Whether ``share`` is what ``owner`` dealt ``holder`` of its ``secret``: at the holder's
    point, at the round's threshold, of a 32-byte secret, under ``commitment``."""
    if (share.x, share.threshold, share.secret_len) != (holder + 1, threshold, SECRET_BYTES):
        return False
    opened = share_commitment(share, round=round, owner=owner, holder=holder, secret=secret)
    return opened == commitment


def dealt_leaf(holder: int, sealed_digest: bytes, commitments: bytes) -> bytes:
    """The Merkle leaf of what a sender dealt to ``holder``: its sealed blob's SHA-256 and the
    commitments to the two shares in it."""
    return merkle.leaf_hash(struct.pack("<I", holder) + sealed_digest + commitments)


def deal_leaves(holders: list[int], sealed: list[bytes], commitments: list[bytes]) -> list[bytes]:
    """The Merkle leaves of what a sender dealt to each of ``holders`` (:func:`dealt_leaf`)."""
    return [
        dealt_leaf(h, hashlib.sha256(blob).digest(), c)
        for h, blob, c in zip(holders, sealed, commitments, strict=True)
    ]


def deal_statement(
    round: int, session: bytes, sender: int, seed_commitment: bytes, root: bytes
) -> bytes:  # fmt: skip
    """What ``sender`` signs at ``share_keys``; ``session``: the session binding and the graph
    seed (this run only, so no statement carries over to another run of the round)."""
    return struct.pack("<II", round, sender) + session + seed_commitment + root


@dataclass(frozen=True)
class Dealt:
    """What one sender dealt to one holder, with what proves the sender signed it.

    Attributes:
        sealed_digest: SHA-256 of the sealed blob.
        commitments: to the holder's share of the seed, then of the mask key (2 x 32 bytes).
        seed_commitment: the sender's commitment to its self-mask seed.
        index, count: the holder's leaf among the sender's ``count`` holders.
        path: the Merkle path from that leaf to the signed root.
        signature: the sender's signature on :func:`deal_statement`.
    """

    sealed_digest: bytes
    commitments: bytes
    seed_commitment: bytes
    index: int
    count: int
    path: bytes
    signature: bytes

    def commitment(self, secret: Secret) -> bytes:
        """The commitment to the holder's share of ``secret``."""
        return commitment_to(secret, self.commitments)

    def root(self, holder: int) -> bytes:
        """The Merkle root this holder's leaf and path lead to (``ValueError`` if none)."""
        leaf = dealt_leaf(holder, self.sealed_digest, self.commitments)
        return merkle.root_from_path(leaf, self.index, self.count, self.path)

    def signed(
        self, roster: Roster, *, round: int, session: bytes, sender: int, holder: int
    ) -> bool:  # fmt: skip
        """Whether ``sender`` signed this deal to ``holder``: its leaf lies under a root the
        sender signed, with the seed commitment (a holder checks this only when its blob
        does not open or its shares miss their commitments, before revealing its key)."""
        try:
            statement = deal_statement(
                round, session, sender, self.seed_commitment, self.root(holder)
            )
            roster.verify(sender, self.signature, DEAL_LABEL, statement)
        except (ValueError, InvalidMessage):
            return False
        return True


def verified_deals(
    roster: Roster, *, round: int, session: bytes, sender: int, holders: list[int],
    sealed: list[bytes], commitments: list[bytes], seed_commitment: bytes, signature: bytes,
) -> list[Dealt]:  # fmt: skip
    """What ``sender`` dealt to each of ``holders`` (sorted), once its signature on the seed
    commitment and the root over them verifies (the server checks it on arrival).

    Raises:
        InvalidMessage: the signature does not verify.
    """
    leaves = deal_leaves(holders, sealed, commitments)
    statement = deal_statement(round, session, sender, seed_commitment, merkle.root(leaves))
    roster.verify(sender, signature, DEAL_LABEL, statement)
    return [
        Dealt(hashlib.sha256(sealed[i]).digest(), commitments[i], seed_commitment, i,
              len(holders), path, signature)
        for i, path in enumerate(merkle.paths(leaves))
    ]  # fmt: skip


def relayed_fields(deals: list[tuple[bytes, Dealt]]) -> list:
    """The six message fields that carry ``(sealed blob, Dealt)`` pairs to a holder."""
    return [
        b"".join(sealed for sealed, _ in deals),
        b"".join(d.commitments for _, d in deals),
        b"".join(d.seed_commitment for _, d in deals),
        b"".join(d.signature for _, d in deals),
        np.array([(d.index, d.count) for _, d in deals], dtype=np.uint32).reshape(-1, 2),
        b"".join(d.path for _, d in deals),
    ]


def parse_relayed(
    message: wire.Message, first: int, count: int, sealed_bytes: int
) -> list[tuple[bytes, Dealt]]:  # fmt: skip
    """Inverse of :func:`relayed_fields`, from field ``first``: ``count`` pairs ``(sealed
    blob, Dealt)``. Raises :class:`WrongShape` on fields of the wrong size."""
    sealed = message.chunks(first, size=sealed_bytes, count=count)
    commitments = message.chunks(first + 1, size=COMMITMENTS_BYTES, count=count)
    seeds = message.chunks(first + 2, size=32, count=count)
    signatures = message.chunks(first + 3, size=SIGNATURE_BYTES, count=count)
    positions = message.array(first + 4, dtype="<u4", shape=(count, 2)).tolist()
    if any(not 0 <= index < total for index, total in positions):
        raise WrongShape("a Merkle leaf index outside its tree")
    lengths = [merkle.depth(total) * merkle.HASH_BYTES for _, total in positions]
    blob, paths, at = message.raw(first + 5, length=sum(lengths)), [], 0
    for length in lengths:
        paths.append(blob[at : at + length])
        at += length
    return [
        (sealed[i], Dealt(hashlib.sha256(sealed[i]).digest(), commitments[i], seeds[i],
                          index, total, paths[i], signatures[i]))
        for i, (index, total) in enumerate(positions)
    ]  # fmt: skip
