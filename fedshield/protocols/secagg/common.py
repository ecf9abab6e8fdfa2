"""What both SecAgg+ sides share: the stages, protocol constants, key-derivation labels,
pairwise masks and the self-mask seed commitment. The protocol, its threat model and the legend
from the paper's notation to our names: :mod:`fedshield.protocols.secagg`.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

from fedshield.crypto.keys import KeyPair
from fedshield.crypto.prg import add_mask
from fedshield.protocols.ids import ProtocolId, StrEnum

__all__ = [
    "ADVERTISE_LABEL",
    "CONSISTENCY_LABEL",
    "MAX_CLIENT_ID",
    "PAIR",
    "PROTOCOL_ID",
    "STAGES",
    "SecAggStage",
    "add_pair_seed",
    "add_pairwise_mask",
    "advertisement",
    "commit",
    "graph_seed",
    "ids",
    "mask_info",
    "pairwise_seed",
    "session_binding",
    "survivor_statement",
]


class SecAggStage(StrEnum):
    """The SecAgg+ stages, in order (Bonawitz et al. rounds 0 to 4, then ``expel``: only in a
    round where a client is proven to have dealt garbage shares, or a dropped client's mask key
    cannot be rebuilt)."""

    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    EXPEL = "expel"


PROTOCOL_ID = ProtocolId.SECAGG
STAGES: tuple[SecAggStage, ...] = tuple(SecAggStage)
PAIR = struct.Struct("<II")


MAX_CLIENT_ID = 65534  # a client's Shamir point is its id + 1, at most 65535
ADVERTISE_LABEL = b"secagg/advertise-keys"  # a site's signature on its round keys
CONSISTENCY_LABEL = b"secagg/consistency"  # a site's signature on the set it unmasks for


def advertisement(
    round: int, params: bytes, client: int, channel: bytes, mask: bytes, receive_root: bytes
) -> bytes:  # fmt: skip
    """What a client signs at ``advertise_keys``: its two fresh public keys and the Merkle
    root over the receive keys it made for each listed peer
    (:func:`~fedshield.protocols.secagg.channels.receive_leaves`), bound to the round, the
    parameters and itself (a server cannot swap them or replay them elsewhere)."""
    return struct.pack("<II", round, client) + params + channel + mask + receive_root


def survivor_statement(round: int, session: bytes, survivors) -> bytes:
    """What a client signs at ``consistency``: the round's masked-input survivors ``U_3``;
    ``session``: the session binding and the graph seed (derived from this session's fresh
    keys, so a signature never carries over to another run of the same round)."""
    return struct.pack("<I", round) + session + ids(survivors).astype("<u4").tobytes()


def session_binding(params: bytes, clients) -> bytes:
    """What every signature of a round is bound to besides the round number: the parameters
    and the clients the server listed. Two clients shown different lists (so different
    ``n``, thresholds and quorums) accept none of each other's keys."""
    listed = ids(clients).astype("<u4").tobytes()
    return hashlib.sha256(b"fedshield/secagg/session" + params + listed).digest()


def graph_seed(round: int, params: bytes, channel: dict[int, bytes], mask: dict[int, bytes]):
    """The neighbour graph's seed, derived from the round and every advertised (signed) key:
    the server alone does not choose it (it can choose which sites to call dropped, and a
    colluder answering last can try keys; privacy rests on the colluder bound, not on the
    graph)."""
    h = hashlib.sha256(b"fedshield/secagg/graph" + struct.pack("<I", round) + params)
    for c in sorted(channel):
        h.update(struct.pack("<I", c) + channel[c] + mask[c])
    return h.digest()


def ids(values) -> np.ndarray:
    """Client ids as the sorted uint32 array the messages carry."""
    return np.array(sorted(values), dtype=np.uint32)


def mask_info(round: int, a: int, b: int, params: bytes) -> bytes:
    """HKDF label of the pairwise mask seed ``s_{a,b}`` (symmetric in ``a`` and ``b``),
    bound to the round's parameter digest ``params``: two clients told different parameters
    (ranges, say) derive different masks, which then never cancel in the sum."""
    lo, hi = min(a, b), max(a, b)
    return b"fedshield/secagg/pairwise-mask" + struct.pack("<III", round, lo, hi) + params


def pairwise_seed(
    mask_keys: KeyPair, peer_mask_public_key: bytes, *, round: int, me: int, peer: int,
    params: bytes,
) -> bytes:  # fmt: skip
    """``s_{me,peer}``: the seed of the pairwise mask of ``me`` and ``peer`` (the same on both
    sides), bound to the round's parameter digest ``params`` (:func:`mask_info`)."""
    return mask_keys.agree(peer_mask_public_key, info=mask_info(round, me, peer, params))


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
    seed = pairwise_seed(
        mask_keys, peer_mask_public_key, round=round, me=me, peer=peer, params=params
    )
    add_pair_seed(acc, seed, me=me, peer=peer, scratch=scratch, undo=undo)


def add_pair_seed(
    acc: np.ndarray, seed: bytes, *, me: int, peer: int, scratch: np.ndarray, undo: bool = False
) -> None:
    """Add (``undo``: take away) ``me``'s pairwise mask with ``peer`` from its ``seed``."""
    add_mask(acc, seed, subtract=(me > peer) != undo, scratch=scratch)


def commit(seed: bytes, *, round: int, client: int) -> bytes:
    """Hash commitment to a self-mask seed (the seed has 256 bits of entropy: hiding)."""
    label = b"fedshield/secagg/self-seed" + struct.pack("<II", round, client)
    return hashlib.sha256(label + seed).digest()
