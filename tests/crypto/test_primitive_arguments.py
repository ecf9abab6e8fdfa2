"""The primitives' public constructors and functions check their arguments: TypeError for a
wrong type, ValueError for a wrong value, naming the argument."""

from __future__ import annotations

import numpy as np
import pytest

from fedshield import wire
from fedshield.crypto import prg, shamir
from fedshield.crypto.keys import KeyPair, open_share, seal_share
from fedshield.crypto.seal import SealIO, seal_context
from fedshield.errors import InvalidShare

KEY = bytes(32)


@pytest.mark.parametrize(
    ("call", "error", "name"),
    [
        (lambda: shamir.split("secret", threshold=1, xs=[1]), TypeError, "secret"),
        (lambda: shamir.split(b"s", threshold=1.0, xs=[1]), TypeError, "threshold"),
        (lambda: shamir.split(b"s", threshold=True, xs=[1]), TypeError, "threshold"),
        (lambda: shamir.split(b"s", threshold=1, xs=[1.0]), TypeError, "xs"),
        (lambda: shamir.split(b"s", threshold=1, xs="12"), TypeError, "xs"),
        (lambda: shamir.Share(1.0, 2, 1, 1), TypeError, "x"),
        (lambda: shamir.Share(1, 2, 1, "1"), TypeError, "secret_len"),
        (lambda: shamir.reconstruct([b"share"]), TypeError, "shares"),
        (lambda: prg.add_mask(np.zeros(4, np.uint16), "seed" * 8), TypeError, "seed"),
        (lambda: prg.add_mask(np.zeros(4, np.uint16), bytes(16)), ValueError, "seed"),
        (lambda: prg.add_mask([0, 0], bytes(32)), TypeError, "acc"),
        (lambda: prg.ring_dtype(0), ValueError, "bits"),
        (lambda: prg.ring_dtype(8.0), TypeError, "bits"),
        (lambda: prg.mask_scratch(-1, 8), ValueError, "length"),
        (lambda: KeyPair.from_private_bytes("k" * 32), TypeError, "data"),
        (lambda: KeyPair(b"k" * 32), TypeError, "private_key"),
        (lambda: KeyPair.generate().agree(KEY, info="label"), TypeError, "info"),
        (lambda: KeyPair.generate().agree(list(KEY), info=b"x"), TypeError, "peer_public"),
        (lambda: seal_share(KEY[:16], b"p", round=0, sender=0, receiver=1), ValueError, "key"),
        (lambda: seal_share(KEY, "p", round=0, sender=0, receiver=1), TypeError, "plaintext"),
        (lambda: open_share("k", b"x" * 40, round=0, sender=0, receiver=1), TypeError, "key"),
        (lambda: seal_context("tfhe", 4096, (60,)), ValueError, "scheme"),
        (lambda: seal_context("bfv", 4096.0, (60,)), TypeError, "poly_degree"),
        (lambda: SealIO(None), TypeError, "context"),
        (lambda: wire.Header(1, 256, 0, 0), ValueError, "stage"),
        (lambda: wire.Header(1, 1, -1, 0), ValueError, "round"),
        (lambda: wire.Header(1, 1, 0, "0"), TypeError, "sender"),
        (lambda: wire.Header(1.0, 1, 0, 0), TypeError, "protocol"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(call, error, name):
    with pytest.raises(error, match=name):
        call()


def test_a_short_reconstructed_private_key_is_an_invalid_share():
    with pytest.raises(InvalidShare):
        KeyPair.from_private_bytes(bytes(31))
