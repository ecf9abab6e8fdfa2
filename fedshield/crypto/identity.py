"""Long-term site identities: Ed25519 signing keys from ``cryptography``.

Building block: a federation's :class:`~fedshield.protocols.roster.Roster` holds every site's
public identity key; protocol sessions sign what a server could otherwise forge or swap (each
round's fresh public keys, the survivor set a site agrees to unmask for, the sites an HE key
is sealed to).

Every signature is over a domain-separating label and the message (STYLE.md, rule 5): a
signature made for one purpose never verifies for another.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fedshield._validate import check_bytes
from fedshield.errors import BadSignature, ConfigError

__all__ = [
    "IDENTITY_KEY_BYTES",
    "SIGNATURE_BYTES",
    "Identity",
    "check_identity_key",
    "fingerprint",
    "verify",
]

IDENTITY_KEY_BYTES = 32
SIGNATURE_BYTES = 64
_RAW = serialization.Encoding.Raw
_PREFIX = b"fedshield/identity/"


class Identity:
    """A site's long-term Ed25519 key. Keep it at the site; its public half goes in the
    roster. Use :meth:`generate`, :meth:`load` or :meth:`from_private_bytes`."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError("private_key must be an Ed25519PrivateKey")
        self._private = private_key
        self.public_bytes = private_key.public_key().public_bytes(
            _RAW, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls) -> Identity:
        """A new identity from the operating system's CSPRNG."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> Identity:
        """Rebuild an identity from its 32 raw private bytes."""
        check_bytes("data", data, length=IDENTITY_KEY_BYTES)
        return cls(Ed25519PrivateKey.from_private_bytes(data))

    def save(self, path: str | Path) -> None:
        """Write the private key to a new file readable by its owner only (``O_EXCL``, mode
        0600: never over an existing file)."""
        raw = self._private.private_bytes(
            _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(raw)

    @classmethod
    def load(cls, path: str | Path) -> Identity:
        """Read an identity written by :meth:`save`.

        Raises:
            ConfigError: the file is missing, or is not a 32-byte key.
        """
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the identity key {path}: {exc.strerror}") from None
        if len(data) != IDENTITY_KEY_BYTES:
            raise ConfigError(
                f"{path} is not a fedshield identity key ({len(data)} bytes, expected 32): "
                "make one with `fedshield roster enrol`"
            )
        return cls.from_private_bytes(data)

    def sign(self, label: bytes, message: bytes) -> bytes:
        """A 64-byte signature of ``message`` for the purpose ``label``."""
        _check_label(label)
        return self._private.sign(_PREFIX + label + b"\0" + bytes(message))

    def __repr__(self) -> str:  # never the private key
        return f"Identity(fingerprint={fingerprint(self.public_bytes)})"


def fingerprint(public: bytes) -> str:
    """The first 16 hex digits of SHA-256 of an identity public key: what two people compare
    to confirm they hold the same key."""
    return hashlib.sha256(public).hexdigest()[:16]


def _check_label(label: bytes) -> None:
    """A label ends at the first NUL byte of what is signed, so it may hold none (two
    label-message pairs could otherwise sign the same bytes)."""
    check_bytes("label", label)
    if b"\0" in label:
        raise ValueError("a signature label may not contain a NUL byte")


def check_identity_key(public: bytes) -> bytes:
    """``public`` if it is 32 bytes, the size of an Ed25519 public key (``cryptography``
    takes any 32 bytes; one that is not a curve point fails every verification).

    Raises:
        ConfigError: it is not.
    """
    if not isinstance(public, bytes) or len(public) != IDENTITY_KEY_BYTES:
        raise ConfigError("an identity public key is 32 bytes")
    return public


def verify(public: bytes, signature: bytes, label: bytes, message: bytes, *, who: str) -> None:
    """Check ``signature`` of ``message`` for ``label`` under the identity key ``public``.

    Raises:
        BadSignature: it does not verify (``who`` names the claimed signer in the message).
    """
    _check_label(label)
    if len(signature) != SIGNATURE_BYTES:
        raise BadSignature(f"{who}: a signature is 64 bytes, got {len(signature)}")
    try:
        key = Ed25519PublicKey.from_public_bytes(public)
        key.verify(bytes(signature), _PREFIX + label + b"\0" + bytes(message))
    except (InvalidSignature, ValueError):
        raise BadSignature(f"{who}: the signature does not verify under its identity key") from None
