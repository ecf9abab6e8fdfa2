"""What both sides of ``he`` (and of its key setup) share: the protocol ids, the stages, and
ciphertext parsing."""

from __future__ import annotations

import struct

import numpy as np
import tenseal.sealapi as sa

from fedshield import wire
from fedshield.crypto.seal import SealIO
from fedshield.errors import InvalidCiphertext
from fedshield.protocols.he.params import HEPlan
from fedshield.protocols.ids import ProtocolId, StrEnum

__all__ = [
    "DECRYPTS_PER_FORK",
    "ENCRYPTS_PER_FORK",
    "KEY_PROTOCOL_ID",
    "KEY_STAGES",
    "KEY_TRANSPORT_LABEL",
    "PROTOCOL_ID",
    "STAGES",
    "HEKeyStage",
    "HEStage",
    "ThresholdKeyStage",
    "ThresholdStage",
    "key_transport_statement",
    "load_ciphertexts",
    "read_sizes",
]


class HEStage(StrEnum):
    """The stages of an ``he`` round, in order."""

    INPUT = "input"  # each site: its ciphertexts
    AGGREGATE = "aggregate"  # the server: the summed ciphertexts, for the sites to decrypt


class HEKeyStage(StrEnum):
    """The stages of ``he``'s one-time key distribution, in order."""

    ADVERTISE = "advertise"  # each site: its X25519 public key, signed by its identity
    SEAL = "seal"  # the key holder: the secret key sealed to each site
    INSTALL = "install"  # each site: opens its sealed key


class ThresholdKeyStage(StrEnum):
    """The stages of threshold ``he``'s one-time collective key generation, in order."""

    COMMIT = "commit_share"  # each site: the hash of its public share, signed
    CONFIRM = "confirm_shares"  # the server: every signed commitment; each site: its signature
    REVEAL = "reveal_share"  # the server: every site's confirmation; each site: its share
    INSTALL = "install_key"  # the server: every share; each site: the collective key's hash


class ThresholdStage(StrEnum):
    """The stages of a threshold ``he`` round, in order."""

    INPUT = "input"  # each site: its ciphertexts
    DIGEST = "digest"  # the server: the sum; each site: its signed digest for the sum's challenge
    DECRYPT = "decrypt"  # the server: every signed digest; each site: its partial decryption
    AGGREGATE = "aggregate"  # the server: the sum of the partials; each site decodes the sum


PROTOCOL_ID = ProtocolId.HE
THRESHOLD_ID = ProtocolId.HE_THRESHOLD
THRESHOLD_STAGES: tuple[ThresholdStage, ...] = tuple(ThresholdStage)
THRESHOLD_KEY_ID = ProtocolId.HE_THRESHOLD_KEYS
THRESHOLD_KEY_STAGES: tuple[ThresholdKeyStage, ...] = tuple(ThresholdKeyStage)
SHARE_COMMIT_LABEL = b"he/threshold-share"  # a site's signature on its public share's hash
SHARE_LIST_LABEL = b"he/threshold-share-list"  # ... on the list of every site's commitment
DIGEST_LABEL = b"he/threshold-digest"  # ... on its ciphertexts' digest for a round's sum
STAGES: tuple[HEStage, ...] = tuple(HEStage)
KEY_PROTOCOL_ID = ProtocolId.HE_KEYS
KEY_STAGES: tuple[HEKeyStage, ...] = tuple(HEKeyStage)
KEY_TRANSPORT_LABEL = b"he/key-transport"  # a site's signature on its transport key
# By default a site forks a worker per core only for at least this many ciphertexts each
# (about 1 ms to encrypt one, 0.4 ms to decrypt one; measured fork cost 20-70 ms).
ENCRYPTS_PER_FORK = 256
DECRYPTS_PER_FORK = 512


def key_transport_statement(round: int, params_id: bytes, site: int, public: bytes) -> bytes:
    """What a site signs at ``advertise``: its fresh X25519 transport key, bound to the round,
    the HE parameters and itself (the server can neither swap it nor pass it off as
    another site's)."""
    return struct.pack("<II", round, site) + params_id + public


def read_sizes(message: wire.Message, first: int, plan: HEPlan) -> tuple[np.ndarray, memoryview]:
    """The ciphertext sizes (field ``first``) and their concatenated bytes (``first + 1``)."""
    sizes = message.array(first, dtype="<u4", shape=(plan.n_ciphertexts,)).astype(np.int64)
    if (sizes > plan.max_ciphertext_bytes).any():
        raise InvalidCiphertext("a ciphertext is larger than these parameters allow")
    return sizes, message.view(first + 1, length=int(sizes.sum()))


def load_ciphertexts(
    sizes: np.ndarray, blob: bytes | memoryview, plan: HEPlan, io: SealIO
) -> list[sa.Ciphertext]:
    """Ciphertexts of the given ``sizes`` from their concatenated bytes, each checked."""
    out, offset = [], 0
    for size in sizes:
        out.append(
            io.load_ciphertext(blob[offset : offset + size], max_bytes=plan.max_ciphertext_bytes)
        )
        offset += size
    return out
