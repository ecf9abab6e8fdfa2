"""SEAL's serialization layout, read and written by hand: the coefficients of ciphertexts,
public keys, secret keys and plaintexts, which ``tenseal.sealapi`` exposes only through
``save``/``load``.

Building block for threshold ``he`` (:mod:`fedshield.crypto.threshold`), which needs raw
polynomials SEAL keeps private (a secret-key share, a partial decryption, a collective public
key). Layout (SEAL 4.x, ``serialization.h``, ``ciphertext.cpp``, ``plaintext.cpp``,
``dynarray.h``): a 16-byte header (magic ``0xA15E``, header size, version major/minor,
compression, reserved, total size), then the object's members, zstd-compressed when the
header says so. A ciphertext (and a public key): ``parms_id`` (4 x u64), NTT flag (u8), size,
poly degree, coefficient-modulus count (u64 each), scale (f64), correction factor (u64), then
its data as a nested uncompressed ``DynArray`` (header, count, ``count`` x u64). A plaintext
(and a secret key): ``parms_id``, coefficient count (u64), scale (f64), then the ``DynArray``.
Only the versions in :data:`KNOWN_VERSIONS` are accepted; anything else, or any field out of
place, raises :class:`~fedshield.errors.InvalidCiphertext`. Writing always produces the
uncompressed form, which SEAL loads (the round trip is tested against SEAL itself).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import zstandard

from fedshield.errors import InvalidCiphertext

__all__ = [
    "KNOWN_VERSIONS",
    "SealCiphertext",
    "SealPlaintext",
    "read_ciphertext",
    "read_plaintext",
    "write_ciphertext",
    "write_plaintext",
]

MAGIC = 0xA15E
KNOWN_VERSIONS = frozenset({(4, 3)})  # SEAL in tenseal 0.3.x; a new layout must be re-checked
_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compression, 0, size
_NONE, _ZSTD = 0, 2
_CT_META = struct.Struct("<32sBQQQdQ")  # parms_id, ntt, size, degree, moduli, scale, factor
_PT_META = struct.Struct("<32sQd")  # parms_id, coefficient count, scale
_MAX_BODY = 1 << 28


@dataclass(frozen=True)
class SealCiphertext:
    """A ciphertext's (or public key's) members: ``data[poly, limb, coefficient]``."""

    parms_id: bytes
    ntt_form: bool
    data: np.ndarray  # uint64, shape (size, moduli, degree)
    scale: float = 1.0
    correction_factor: int = 1


@dataclass(frozen=True)
class SealPlaintext:
    """A plaintext's (or secret key's) members: ``data`` flat (a secret key: ``limb * degree``
    coefficients in NTT form)."""

    parms_id: bytes
    data: np.ndarray  # uint64, flat
    scale: float = 1.0


def _body(blob: bytes | memoryview) -> memoryview:
    blob = memoryview(blob)
    if len(blob) < _HEADER.size:
        raise InvalidCiphertext("too short for a SEAL object")
    magic, header_size, major, minor, compression, _, size = _HEADER.unpack_from(blob)
    if magic != MAGIC or header_size != _HEADER.size or size != len(blob):
        raise InvalidCiphertext("not a SEAL object (bad magic, header or size)")
    if (major, minor) not in KNOWN_VERSIONS:
        raise InvalidCiphertext(f"SEAL serialization {major}.{minor} is not a known layout")
    if compression == _NONE:
        return blob[_HEADER.size :]
    if compression != _ZSTD:
        raise InvalidCiphertext(f"SEAL compression mode {compression} is not supported")
    try:
        body = zstandard.ZstdDecompressor().decompress(
            bytes(blob[_HEADER.size :]), max_output_size=_MAX_BODY
        )
    except zstandard.ZstdError as exc:
        raise InvalidCiphertext(f"the SEAL object does not decompress ({exc})") from None
    return memoryview(body)


def _read_array(body: memoryview, offset: int, count: int) -> np.ndarray:
    """The nested ``DynArray`` at ``offset``: exactly ``count`` u64 and nothing after."""
    inner = body[offset:]
    if len(inner) < _HEADER.size + 8:
        raise InvalidCiphertext("the SEAL object's data is cut short")
    magic, header_size, major, minor, compression, _, size = _HEADER.unpack_from(inner)
    (stored,) = struct.unpack_from("<Q", inner, _HEADER.size)
    expected = _HEADER.size + 8 + 8 * count
    if (
        magic != MAGIC or header_size != _HEADER.size or (major, minor) not in KNOWN_VERSIONS
        or compression != _NONE or stored != count or size != expected or len(inner) != expected
    ):  # fmt: skip
        raise InvalidCiphertext("the SEAL object's data array is not where the layout says")
    return np.frombuffer(inner, dtype="<u8", count=count, offset=_HEADER.size + 8).copy()


def _write(body: bytes) -> bytes:
    size = _HEADER.size + len(body)
    major, minor = max(KNOWN_VERSIONS)
    return _HEADER.pack(MAGIC, _HEADER.size, major, minor, _NONE, 0, size) + body


def _array_bytes(data: np.ndarray) -> bytes:
    flat = np.ascontiguousarray(data, dtype="<u8").reshape(-1)
    return _write(struct.pack("<Q", flat.size) + flat.tobytes())


def read_ciphertext(blob: bytes | memoryview) -> SealCiphertext:
    """The members of a serialized ciphertext or public key (compressed or not)."""
    body = _body(blob)
    if len(body) < _CT_META.size:
        raise InvalidCiphertext("too short for a SEAL ciphertext")
    parms_id, ntt, size, degree, moduli, scale, factor = _CT_META.unpack_from(body)
    if ntt > 1 or not (1 <= size <= 16) or degree not in (1024, 2048, 4096, 8192, 16384, 32768):
        raise InvalidCiphertext("the SEAL ciphertext's metadata is out of range")
    if not 1 <= moduli <= 64:
        raise InvalidCiphertext("the SEAL ciphertext's modulus count is out of range")
    data = _read_array(body, _CT_META.size, size * moduli * degree)
    return SealCiphertext(
        parms_id, bool(ntt), data.reshape(size, moduli, degree), scale, int(factor)
    )


def write_ciphertext(ct: SealCiphertext) -> bytes:
    """Uncompressed bytes SEAL loads as a ``Ciphertext`` (or a ``PublicKey``)."""
    size, moduli, degree = ct.data.shape
    meta = _CT_META.pack(
        ct.parms_id, int(ct.ntt_form), size, degree, moduli, ct.scale, ct.correction_factor
    )
    return _write(meta + _array_bytes(ct.data))


def read_plaintext(blob: bytes | memoryview) -> SealPlaintext:
    """The members of a serialized plaintext or secret key (compressed or not)."""
    body = _body(blob)
    if len(body) < _PT_META.size:
        raise InvalidCiphertext("too short for a SEAL plaintext")
    parms_id, count, scale = _PT_META.unpack_from(body)
    if count > _MAX_BODY // 8:
        raise InvalidCiphertext("the SEAL plaintext's coefficient count is out of range")
    return SealPlaintext(parms_id, _read_array(body, _PT_META.size, count), scale)


def write_plaintext(pt: SealPlaintext) -> bytes:
    """Uncompressed bytes SEAL loads as a ``Plaintext`` (or a ``SecretKey``)."""
    meta = _PT_META.pack(pt.parms_id, pt.data.size, pt.scale)
    return _write(meta + _array_bytes(pt.data))
