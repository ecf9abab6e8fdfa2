import numpy as np
import pytest

from fedshield.compress.bitpack import (
    pack,
    pack_buffer,
    pack_into,
    pack_reference,
    packed_size,
    unpack,
    unpack_reference,
)


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 63, 64, 65, 1001, 4099])
def test_kernels_match_the_numpy_reference_and_round_trip(bits, length):
    values = np.random.default_rng(bits * 1000 + length).integers(
        0, 2**bits, size=length, dtype=np.uint64
    )
    packed = pack(values, bits)
    assert len(packed) == packed_size(length, bits)
    assert packed == pack_reference(values, bits)
    np.testing.assert_array_equal(unpack(packed, length, bits), values)
    np.testing.assert_array_equal(unpack_reference(packed, length, bits), values)


@pytest.mark.parametrize("bits", [20, 31, 32, 33, 48, 56])
def test_wide_values_round_trip(bits):
    values = np.random.default_rng(bits).integers(0, 2**bits, size=333, dtype=np.uint64)
    np.testing.assert_array_equal(unpack(pack(values, bits), 333, bits), values)


def test_known_vector_and_validation():
    assert pack(np.array([1, 2, 3], np.uint64), 2) == bytes([0b111001])
    with pytest.raises(ValueError):
        pack(np.zeros(3, np.uint64), 0)
    with pytest.raises(ValueError):
        pack(np.zeros(3, np.uint64), 57)
    with pytest.raises(ValueError):
        unpack(b"\x00\x00", 3, 8)


def test_unaligned_input_and_narrow_output_types():
    values = np.random.default_rng(5).integers(0, 2**12, size=1000, dtype=np.uint64)
    packed = pack(values, 12)
    shifted = memoryview(b"x" + packed)[1:]  # a field inside a wire message: any offset
    np.testing.assert_array_equal(unpack(shifted, 1000, 12, np.uint16), values)
    with pytest.raises(ValueError):
        unpack(packed, 1000, 12, np.uint8)


def test_pack_into_reuses_a_buffer():
    buffer = pack_buffer(500, 9)
    for seed in range(3):
        values = np.random.default_rng(seed).integers(0, 2**9, size=500, dtype=np.uint16)
        size = pack_into(values, 9, buffer)
        assert buffer[:size].tobytes() == pack_reference(values, 9)
    with pytest.raises(ValueError):
        pack_into(np.zeros(501, np.uint16), 9, buffer[:8])
