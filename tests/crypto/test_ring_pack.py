"""Ring elements through bit-packing: the fused unpack-and-add sums clients' inputs in the
ring's dtype exactly as unpacking each input and adding it would."""

import numpy as np
import pytest

from fedshield.crypto import ring
from fedshield.crypto.prg import ring_dtype


@pytest.mark.parametrize("bits", [12, 16, 17, 32, 33, 56])
def test_unpack_add_sums_inputs_as_unpack_does(bits):
    rng = np.random.default_rng(bits)
    inputs = [rng.integers(0, 2**bits, size=1001, dtype=np.uint64) for _ in range(4)]
    packed = [ring.pack(values, bits) for values in inputs]
    acc = np.zeros(1001, dtype=ring_dtype(bits))
    expected = acc.copy()
    for data in packed:
        assert ring.unpack_add(memoryview(b"x" + data)[1:], 1001, bits, acc) is acc
        expected += ring.unpack(data, 1001, bits)
    np.testing.assert_array_equal(acc, expected)


def test_unpack_add_wants_the_ring_dtype():
    data = ring.pack(np.zeros(10, np.uint64), 12)
    with pytest.raises(ValueError, match="uint16"):
        ring.unpack_add(data, 10, 12, np.zeros(10, np.uint64))
