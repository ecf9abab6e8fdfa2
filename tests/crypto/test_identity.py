"""Site identity keys: generation, the key file (new, owner-only, exactly 32 bytes), and
signatures bound to their label."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedshield.crypto.identity import (
    SIGNATURE_BYTES,
    Identity,
    check_identity_key,
    fingerprint,
    verify,
)
from fedshield.errors import BadSignature, ConfigError


def test_generated_identities_are_distinct():
    keys = {Identity.generate().public_bytes for _ in range(8)}
    assert len(keys) == 8 and all(len(k) == 32 for k in keys)


def test_the_constructor_takes_only_an_ed25519_private_key():
    with pytest.raises(TypeError, match="Ed25519PrivateKey"):
        Identity(b"\0" * 32)  # type: ignore[arg-type]
    key = Ed25519PrivateKey.generate()
    assert Identity(key).public_bytes == Identity(key).public_bytes


def test_from_private_bytes_checks_its_argument():
    with pytest.raises(ValueError, match="32 bytes"):
        Identity.from_private_bytes(b"\1" * 31)
    with pytest.raises(TypeError):
        Identity.from_private_bytes("\1" * 32)  # type: ignore[arg-type]
    a, b = Identity.from_private_bytes(b"\1" * 32), Identity.from_private_bytes(b"\1" * 32)
    assert a.public_bytes == b.public_bytes


def test_save_writes_32_bytes_readable_by_the_owner_only_and_load_reads_them(tmp_path):
    identity, path = Identity.generate(), tmp_path / "site0.identity"
    old = os.umask(0)  # even with a permissive umask
    try:
        identity.save(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 32
    loaded = Identity.load(path)
    assert loaded.public_bytes == identity.public_bytes
    verify(identity.public_bytes, loaded.sign(b"l", b"m"), b"l", b"m", who="site 0")


def test_save_never_overwrites(tmp_path):
    path = tmp_path / "site0.identity"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        Identity.generate().save(path)
    assert path.read_bytes() == b"keep me"
    target = tmp_path / "elsewhere"
    os.symlink(target, tmp_path / "link.identity")  # not even through a dangling link
    with pytest.raises(FileExistsError):
        Identity.generate().save(tmp_path / "link.identity")
    assert not target.exists()


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_load_of_a_wrong_size_file_is_a_config_error(tmp_path, size):
    path = tmp_path / "site0.identity"
    path.write_bytes(b"\1" * size)
    with pytest.raises(ConfigError, match=f"not a fedshield identity key \\({size} bytes"):
        Identity.load(path)


def test_load_of_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the identity key"):
        Identity.load(tmp_path / "absent.identity")


def test_a_signature_verifies_for_its_key_label_and_message_only():
    alice, bob = Identity.generate(), Identity.generate()
    signature = alice.sign(b"keys", b"message")
    assert len(signature) == SIGNATURE_BYTES
    verify(alice.public_bytes, signature, b"keys", b"message", who="alice")
    for public, label, message in [
        (bob.public_bytes, b"keys", b"message"),
        (alice.public_bytes, b"survivors", b"message"),
        (alice.public_bytes, b"keys", b"messagE"),
        (alice.public_bytes, b"keysm", b"essage"),  # the label/message boundary is bound
    ]:
        with pytest.raises(BadSignature, match="alice"):
            verify(public, signature, label, message, who="alice")


def test_verify_refuses_a_wrong_length_signature():
    alice = Identity.generate()
    signature = alice.sign(b"keys", b"m")
    with pytest.raises(BadSignature, match="64 bytes, got 63"):
        verify(alice.public_bytes, signature[:-1], b"keys", b"m", who="alice")


def test_sign_refuses_a_non_bytes_label():
    with pytest.raises(TypeError):
        Identity.generate().sign("keys", b"m")  # type: ignore[arg-type]


@pytest.mark.parametrize("public", [b"\1" * 31, b"\1" * 33, "\1" * 32, None])
def test_check_identity_key(public):
    with pytest.raises(ConfigError, match="32 bytes"):
        check_identity_key(public)  # type: ignore[arg-type]


def test_repr_never_shows_the_private_key():
    identity = Identity.from_private_bytes(b"\7" * 32)
    assert (b"\7" * 32).hex()[:8] not in repr(identity)
    assert fingerprint(identity.public_bytes) in repr(identity)  # what people compare
