"""Public-key validation: every low-order X25519 encoding is refused, whichever key probes it
(one module-level probe key does the check), and real keys pass."""

import pytest

from fedshield.crypto.keys import KeyPair, validate_public_key
from fedshield.errors import WrongShape

P = 2**255 - 19
_ORDER_EIGHT = (  # the two u-coordinates of the points of order 8 (little-endian)
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
)
_ORDER_EIGHT_U = [int.from_bytes(bytes.fromhex(h), "little") for h in _ORDER_EIGHT]
LOW_ORDER = [  # u = 0, 1, -1, the order-8 points, and non-canonical p, p + 1
    u.to_bytes(32, "little")
    for base in (0, 1, P - 1, P, P + 1, *_ORDER_EIGHT_U)
    for u in (base, base | 1 << 255)  # X25519 ignores the top bit
]


@pytest.mark.parametrize("public", LOW_ORDER)
def test_low_order_points_are_refused_as_any_key_would_refuse_them(public):
    with pytest.raises(WrongShape, match="low-order"):
        validate_public_key(public)
    for _ in range(3):  # the same verdict from fresh keys: it does not depend on the probe
        with pytest.raises(WrongShape, match="low-order"):
            KeyPair.generate().agree(public, info=b"test")


def test_real_keys_pass_and_lengths_are_checked():
    for _ in range(50):
        validate_public_key(KeyPair.generate().public_bytes)
    for length in (0, 31, 33):
        with pytest.raises(WrongShape, match="32 bytes"):
            validate_public_key(bytes(length))
