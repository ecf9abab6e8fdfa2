"""SEAL through ``tenseal.sealapi``: contexts, and bytes in and out of SEAL objects.

Building block: use the ``he`` protocol (:mod:`fedshield.protocols.he`) unless you know why not.

SEAL's ``save``/``load`` take file paths only; an anonymous in-memory file (``memfd_create``,
reached as ``/proc/self/fd/N``) carries the bytes, written in place (SEAL reads only the size
its header declares). Nothing, secret keys included, ever has a name another process could
open; where ``memfd_create`` is missing (not Linux) a private temporary file stands in,
removed on close.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile

import tenseal.sealapi as sa

from fedshield._validate import check_choice, check_instance, check_int
from fedshield.errors import ConfigError, InvalidCiphertext

__all__ = ["SealIO", "seal_context"]

_SEAL_MAGIC = 0xA15E
# SEAL's SEALHeader: magic, header size, version major/minor, compression, reserved, total size
_SEAL_HEADER = struct.Struct("<HBBBBHQ")


def seal_context(
    scheme: str, poly_degree: int, coeff_bits: tuple[int, ...], *, plain_bits: int = 0
) -> sa.SEALContext:
    """A SEAL context at 128-bit security (public parameters only): ``scheme`` ``"bfv"``
    (batching plain modulus of ``plain_bits`` bits) or ``"ckks"``."""
    check_choice("scheme", scheme, ("bfv", "ckks"))
    check_int("poly_degree", poly_degree, low=1024, high=32768)
    check_int("plain_bits", plain_bits, low=0, high=60)
    kind = sa.SCHEME_TYPE.BFV if scheme == "bfv" else sa.SCHEME_TYPE.CKKS
    params = sa.EncryptionParameters(kind)
    params.set_poly_modulus_degree(poly_degree)
    params.set_coeff_modulus(sa.CoeffModulus.Create(poly_degree, coeff_bits))
    if scheme == "bfv":
        params.set_plain_modulus(sa.PlainModulus.Batching(poly_degree, plain_bits))
    context = sa.SEALContext(params, True, sa.SEC_LEVEL_TYPE.TC128)
    if not context.parameters_set():
        raise ConfigError(f"SEAL rejected the parameters: {context.parameter_error_message()}")
    return context


class SealIO:
    """Bytes in and out of SEAL objects through one reusable tmpfs file.

    ``load`` checks the serialization header (magic, declared size) before SEAL parses
    anything, and SEAL's own validity check after; failures raise
    :class:`~fedshield.errors.InvalidCiphertext`. One per process: a forked worker makes its
    own. ``close()`` (or the end of a ``with`` block) removes the file.
    """

    def __init__(self, context: sa.SEALContext) -> None:
        self._fd = -1  # nothing to close if the check below raises
        check_instance("context", context, sa.SEALContext, "from seal_context")
        self.context = context
        self._owner = os.getpid()
        self._named = False
        try:
            self._fd = os.memfd_create("fedshield-he", os.MFD_CLOEXEC)
            self.path = f"/proc/self/fd/{self._fd}"
        except (AttributeError, OSError):  # no memfd here: a private (0600) temporary file
            self._fd, self.path = tempfile.mkstemp(prefix="fedshield-he-")
            self._named = True

    def close(self) -> None:
        """Close the file (and remove a named one), only in the process that made it."""
        if self._fd >= 0 and os.getpid() == self._owner:
            with contextlib.suppress(OSError):
                os.close(self._fd)
                if self._named:
                    os.unlink(self.path)
        self._fd = -1

    def __enter__(self) -> SealIO:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def dump(self, obj) -> bytes:
        """Serialized bytes of a SEAL object (or a seeded ``Serializable``)."""
        obj.save(self.path)
        header = os.pread(self._fd, _SEAL_HEADER.size, 0)
        return os.pread(self._fd, _SEAL_HEADER.unpack(header)[-1], 0)

    def load_ciphertext(self, data: bytes, *, max_bytes: int) -> sa.Ciphertext:
        """A ciphertext valid for this context, from untrusted bytes."""
        self._check_header(data, max_bytes)
        ct = sa.Ciphertext()
        self._load_into(ct, data)
        if ct.size() != 2 or not sa.is_valid_for(ct, self.context):
            raise InvalidCiphertext("the ciphertext does not belong to these parameters")
        if ct.parms_id() != self.context.first_parms_id():
            raise InvalidCiphertext("the ciphertext is at another parameter level")
        return ct

    def load_secret_key(self, data: bytes) -> sa.SecretKey:
        """A secret key for this context (from a decrypted key-distribution message)."""
        self._check_header(data, 1 << 22)
        key = sa.SecretKey()
        self._load_into(key, data)
        if not sa.is_valid_for(key, self.context):
            raise InvalidCiphertext("the secret key does not belong to these parameters")
        return key

    def load_object(self, obj, data: bytes | memoryview) -> None:
        """Load ``data`` into ``obj`` (any SEAL object type: a key, plaintext or ciphertext
        this process wrote through :mod:`fedshield.crypto.seal_codec`); SEAL checks it."""
        self._check_header(data, len(data))
        self._load_into(obj, data)
        if not sa.is_valid_for(obj, self.context):
            raise InvalidCiphertext(f"the {type(obj).__name__} does not belong to these parameters")

    def _load_into(self, obj, data: bytes) -> None:
        os.pwrite(self._fd, data, 0)  # SEAL reads the header's size, not to the end of file
        try:
            obj.load(self.context, self.path)
        except Exception as exc:  # SEAL raises ValueError/RuntimeError/etc. on bad bytes
            raise InvalidCiphertext(f"SEAL could not parse the bytes ({exc})") from None

    @staticmethod
    def _check_header(data: bytes, max_bytes: int) -> None:
        if len(data) < _SEAL_HEADER.size:
            raise InvalidCiphertext("too short for a SEAL object")
        magic, _, _, _, _, _, size = _SEAL_HEADER.unpack_from(data)
        if magic != _SEAL_MAGIC or size != len(data) or size > max_bytes:
            raise InvalidCiphertext("not a SEAL object of the expected size")
