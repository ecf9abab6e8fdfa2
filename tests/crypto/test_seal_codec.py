"""The SEAL byte codec against SEAL itself: every object type round-trips both ways (SEAL
loads what we write; we read what SEAL saved, compressed or not), and any version, layout or
length it does not know is refused."""

import struct

import numpy as np
import pytest
import tenseal.sealapi as sa

from fedshield.crypto.seal import SealIO, seal_context
from fedshield.crypto.seal_codec import (
    KNOWN_VERSIONS,
    read_ciphertext,
    read_plaintext,
    write_ciphertext,
    write_plaintext,
)
from fedshield.errors import InvalidCiphertext


@pytest.fixture(scope="module")
def bfv():
    context = seal_context("bfv", 8192, (60, 60, 20), plain_bits=40)
    io = SealIO(context)
    keygen = sa.KeyGenerator(context)
    public = sa.PublicKey()
    keygen.create_public_key(public)
    return context, io, keygen.secret_key(), public


def _encrypt(context, public, values):
    plaintext = sa.Plaintext()
    sa.BatchEncoder(context).encode(values, plaintext)
    ct = sa.Ciphertext()
    sa.Encryptor(context, public).encrypt(plaintext, ct)
    return plaintext, ct


def _decrypt(context, secret, ct):
    plaintext = sa.Plaintext()
    sa.Decryptor(context, secret).decrypt(ct, plaintext)
    return sa.BatchEncoder(context).decode_uint64(plaintext)


def test_seal_saves_in_a_version_the_codec_knows(bfv):
    _, io, secret, _ = bfv
    major, minor = struct.unpack_from("<BB", io.dump(secret), 3)
    assert (major, minor) in KNOWN_VERSIONS


def test_a_ciphertext_round_trips_both_ways(bfv):
    context, io, secret, public = bfv
    values = list(range(8192))
    _, ct = _encrypt(context, public, values)
    saved = io.dump(ct)  # SEAL's own bytes, zstd-compressed
    members = read_ciphertext(saved)
    assert members.data.shape == (2, 2, 8192) and not members.ntt_form
    assert members.parms_id == struct.pack("<4Q", *ct.parms_id())
    assert members.data[0, 0, 5] == ct.dyn_array().at(5)  # SEAL's own accessor agrees
    assert members.data[1, 1, 7] == ct.dyn_array().at(3 * 8192 + 7)
    written = write_ciphertext(members)
    loaded = sa.Ciphertext()
    io.load_object(loaded, written)
    assert _decrypt(context, secret, loaded) == values
    assert np.array_equal(read_ciphertext(io.dump(loaded)).data, members.data)
    assert np.array_equal(read_ciphertext(written).data, members.data)  # uncompressed too


def test_keys_and_plaintexts_round_trip(bfv):
    context, io, secret, public = bfv
    for obj, reader, writer, kind in (
        (public, read_ciphertext, write_ciphertext, sa.PublicKey),
        (secret, read_plaintext, write_plaintext, sa.SecretKey),
        (_encrypt(context, public, [7] * 8192)[0], read_plaintext, write_plaintext, sa.Plaintext),
    ):
        members = reader(io.dump(obj))
        again = kind()
        io.load_object(again, writer(members))
        assert np.array_equal(reader(io.dump(again)).data, members.data)
    members = read_ciphertext(io.dump(public))
    assert members.ntt_form and members.data.shape == (2, 3, 8192)  # key level: 3 primes
    # the written public key encrypts: a written secret key decrypts it
    key, sk = sa.PublicKey(), sa.SecretKey()
    io.load_object(key, write_ciphertext(members))
    io.load_object(sk, write_plaintext(read_plaintext(io.dump(secret))))
    assert _decrypt(context, sk, _encrypt(context, key, [3] * 8192)[1]) == [3] * 8192


def test_a_ckks_ciphertext_keeps_its_scale():
    context = seal_context("ckks", 4096, (60, 49))
    io = SealIO(context)
    secret = sa.KeyGenerator(context).secret_key()
    plaintext = sa.Plaintext()
    sa.CKKSEncoder(context).encode([1.5] * 2048, 2.0**36, plaintext)
    ct = sa.Encryptor(context, secret).encrypt_symmetric(plaintext)
    ct2 = sa.Ciphertext()
    sa.Evaluator(context).add(_load_seeded(io, ct), _load_seeded(io, ct), ct2)
    members = read_ciphertext(io.dump(ct2))
    assert members.scale == 2.0**36 and members.ntt_form
    loaded = sa.Ciphertext()
    io.load_object(loaded, write_ciphertext(members))
    assert loaded.scale == 2.0**36


def _load_seeded(io, serializable):
    ct = sa.Ciphertext()
    io.load_object(ct, io.dump(serializable))
    return ct


def _patched(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + bytes([value]) + data[offset + 1 :]


def test_unknown_versions_layouts_and_lengths_are_refused(bfv):
    context, io, secret, public = bfv
    ct = _encrypt(context, public, [1] * 8192)[1]
    raw = write_ciphertext(read_ciphertext(io.dump(ct)))
    with pytest.raises(InvalidCiphertext, match="not a known layout"):
        read_ciphertext(_patched(raw, 4, 99))  # minor version
    with pytest.raises(InvalidCiphertext, match="not a known layout"):
        read_ciphertext(_patched(raw, 3, 3))  # major version
    with pytest.raises(InvalidCiphertext, match="compression"):
        read_ciphertext(_patched(raw, 5, 1))  # zlib: not produced by SEAL here
    with pytest.raises(InvalidCiphertext, match="not a SEAL object"):
        read_ciphertext(_patched(raw, 0, 0))  # magic
    with pytest.raises(InvalidCiphertext):
        read_ciphertext(raw[:-8])  # truncated
    with pytest.raises(InvalidCiphertext):
        read_ciphertext(raw + b"\0" * 8)  # trailing bytes
    with pytest.raises(InvalidCiphertext, match="too short"):
        read_ciphertext(raw[:10])
    with pytest.raises(InvalidCiphertext):
        read_plaintext(raw)  # a ciphertext is not a plaintext's layout
    # a seeded symmetric ciphertext (shared-key he) has another layout: refused, not misread
    seeded = sa.Encryptor(context, secret).encrypt_symmetric(_encrypt(context, public, [1])[0])
    with pytest.raises(InvalidCiphertext):
        read_ciphertext(io.dump(seeded))
