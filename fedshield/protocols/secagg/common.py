"""What both SecAgg+ sides share: the stages, protocol constants, key-derivation labels,
pairwise masks and the self-mask seed commitment. The protocol, its threat model and the legend
from the paper's notation to our names: :mod:`fedshield.protocols.secagg`.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

from fedshield.crypto import shamir
from fedshield.crypto.keys import KeyPair
from fedshield.crypto.prg import add_mask
from fedshield.protocols.ids import ProtocolId, StrEnum

__all__ = [
    "PAIR",
    "PROTOCOL_ID",
    "SEALED_SHARE_BYTES",
    "STAGES",
    "SecAggStage",
    "add_pairwise_mask",
    "commit",
    "enc_info",
    "ids",
    "mask_info",
]


class SecAggStage(StrEnum):
    """The SecAgg+ stages, in order (Bonawitz et al. rounds 0, 1, 2 and 4)."""

    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    UNMASK = "unmask"


PROTOCOL_ID = ProtocolId.SECAGG
STAGES: tuple[SecAggStage, ...] = tuple(SecAggStage)
PAIR = struct.Struct("<II")
_SHARE_PLAIN = PAIR.size + 2 * shamir.SHARE_BYTES
# AES-GCM: 12-byte nonce, then (sender, receiver) and two shares, then the 16-byte tag.
SEALED_SHARE_BYTES = 12 + _SHARE_PLAIN + 16


def ids(values) -> np.ndarray:
    """Client ids as the sorted uint32 array the messages carry."""
    return np.array(sorted(values), dtype=np.uint32)


def mask_info(round: int, a: int, b: int, params: bytes) -> bytes:
    """HKDF label of the pairwise mask seed ``s_{a,b}`` (symmetric in ``a`` and ``b``),
    bound to the round's parameter digest ``params``: two clients told different parameters
    (ranges, say) derive different masks, which then never cancel in the sum."""
    lo, hi = min(a, b), max(a, b)
    return b"fedshield/secagg/pairwise-mask" + struct.pack("<III", round, lo, hi) + params


def enc_info(round: int, a: int, b: int) -> bytes:
    """HKDF label of the key sealing shares between ``a`` and ``b`` (symmetric)."""
    lo, hi = min(a, b), max(a, b)
    return b"fedshield/secagg/share-key" + struct.pack("<III", round, lo, hi)


def add_pairwise_mask(
    acc: np.ndarray,
    mask_keys: KeyPair,
    peer_mask_public_key: bytes,
    *,
    round: int,
    me: int,
    peer: int,
    params: bytes,
    scratch: np.ndarray,
    undo: bool = False,
) -> None:
    """Add ``me``'s pairwise mask with ``peer`` (``undo``: take it away): +mask for the
    smaller id, -mask for the larger, so each pair cancels in the sum. ``params``: the
    round's parameter digest (:func:`mask_info`)."""
    seed = mask_keys.agree(peer_mask_public_key, info=mask_info(round, me, peer, params))
    add_mask(acc, seed, subtract=(me > peer) != undo, scratch=scratch)


def commit(seed: bytes, *, round: int, client: int) -> bytes:
    """Hash commitment to a self-mask seed (the seed has 256 bits of entropy: hiding)."""
    label = b"fedshield/secagg/self-seed" + struct.pack("<II", round, client)
    return hashlib.sha256(label + seed).digest()
