"""Key agreement and share encryption: X25519, HKDF-SHA256 and AES-GCM from ``cryptography``.

Building block: use the SecAgg+ protocol unless you know why not.

Every derived key is domain-separated: the HKDF ``info`` names the protocol, the purpose, the
round and both parties (STYLE.md, rule 5). A pairwise mask seed is symmetric in the two parties
(both derive the same), a share-encryption key too; the AEAD's associated data binds a
ciphertext to its sender, receiver and round, so a ciphertext replayed to another receiver or
in another round fails authentication.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedshield._validate import check_bytes
from fedshield.errors import InvalidShare, WrongShape

__all__ = [
    "PUBLIC_KEY_BYTES",
    "KeyPair",
    "derive",
    "open_share",
    "seal_share",
    "validate_public_key",
]

PUBLIC_KEY_BYTES = 32
_NONCE_BYTES = 12
_RAW = serialization.Encoding.Raw


class KeyPair:
    """A fresh X25519 key pair. Use :meth:`generate`; one pair per purpose and round."""

    def __init__(self, private_key: X25519PrivateKey) -> None:
        if not isinstance(private_key, X25519PrivateKey):
            raise TypeError("private_key must be an X25519PrivateKey")
        self._private = private_key
        self.public_bytes = private_key.public_key().public_bytes(
            _RAW, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls) -> KeyPair:
        """A new key pair from the operating system's CSPRNG."""
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> KeyPair:
        """Rebuild a pair from its 32 raw private bytes (as recovered from Shamir shares).

        Raises:
            TypeError: ``data`` is not bytes.
            InvalidShare: ``data`` is not 32 bytes long (a bad reconstruction).
        """
        check_bytes("data", data)
        if len(data) != 32:
            raise InvalidShare("an X25519 private key is 32 bytes")
        return cls(X25519PrivateKey.from_private_bytes(data))

    def private_bytes(self) -> bytes:
        """The raw private key, to secret-share it. Never send it anywhere in the clear."""
        return self._private.private_bytes(
            _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def agree(self, peer_public: bytes, *, info: bytes) -> bytes:
        """A 32-byte key shared with the owner of ``peer_public``, bound to ``info``."""
        check_bytes("info", info)
        if not isinstance(peer_public, bytes | memoryview):
            raise TypeError(f"peer_public must be bytes, got {type(peer_public).__name__}")
        if len(peer_public) != PUBLIC_KEY_BYTES:
            raise WrongShape(f"an X25519 public key is 32 bytes, got {len(peer_public)}")
        try:
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:  # a low-order point gives the all-zero secret
            raise WrongShape("peer public key is a low-order point") from None
        return derive(shared, info=info)


# X25519 multiplies by a clamped scalar: a multiple of the cofactor 8, never one of the large
# prime order (of the curve or its twist). The shared secret is thus all zero exactly when the
# peer's point has order dividing 8, whatever the scalar: one probe key serves every check
# (its secret protects nothing) instead of a fresh key per call.
_PROBE = X25519PrivateKey.generate()


def validate_public_key(public: bytes) -> None:
    """Raise :class:`WrongShape` unless ``public`` is a usable X25519 public key (32 bytes, not a
    low-order point, which would make every agreement with it the all-zero secret)."""
    if len(public) != PUBLIC_KEY_BYTES:
        raise WrongShape(f"an X25519 public key is 32 bytes, got {len(public)}")
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise WrongShape("public key is a low-order point") from None


def derive(key_material: bytes, *, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 of ``key_material`` with the domain-separating label ``info``."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(key_material)


def _aad(round: int, sender: int, receiver: int) -> bytes:
    return b"fedshield/secagg/share" + struct.pack("<III", round, sender, receiver)


def seal_share(key: bytes, plaintext: bytes, *, round: int, sender: int, receiver: int) -> bytes:
    """AES-GCM encrypt ``plaintext`` for ``receiver``; the output is nonce || ciphertext."""
    check_bytes("key", key, length=32)
    check_bytes("plaintext", plaintext)
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _aad(round, sender, receiver))


def open_share(key: bytes, sealed: bytes, *, round: int, sender: int, receiver: int) -> bytes:
    """Decrypt and authenticate :func:`seal_share`'s output.

    Raises:
        InvalidShare: if the ciphertext was altered, or is replayed from another round or pair.
    """
    check_bytes("key", key, length=32)
    if len(sealed) < _NONCE_BYTES + 16:
        raise InvalidShare("sealed share too short")
    try:
        return AESGCM(key).decrypt(
            sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], _aad(round, sender, receiver)
        )
    except InvalidTag:
        raise InvalidShare(
            f"share from {sender} to {receiver} failed authentication (tampered or replayed)"
        ) from None
