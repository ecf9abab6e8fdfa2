import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield.compress.bitpack import (
    pack,
    pack_buffer,
    pack_into,
    pack_reference,
    packed_size,
    unpack,
    unpack_add,
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


_ACCUMULATORS = (np.uint16, np.uint32, np.uint64)


@settings(max_examples=80, deadline=None)
@given(
    bits=st.integers(1, 56),
    length=st.integers(0, 3000),
    offset=st.integers(0, 7),
    high=st.booleans(),
    data=st.data(),
)
def test_unpack_add_adds_the_reference_in_place_modulo_the_dtype(bits, length, offset, high, data):
    dtype = data.draw(
        st.sampled_from([t for t in _ACCUMULATORS if 8 * np.dtype(t).itemsize >= bits])
    )
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    values = rng.integers(0, 2**bits, size=length, dtype=np.uint64)
    packed = pack_reference(values, bits)
    top = np.iinfo(dtype).max
    low = top - 2**bits if high and top > 2**bits else 0  # high: most sums wrap around
    acc = rng.integers(low, top, size=length, dtype=dtype, endpoint=True)
    expected = (acc.astype(np.uint64) + unpack_reference(packed, length, bits)).astype(dtype)
    field = memoryview(bytes(offset) + packed)[offset:]  # a field at any alignment
    assert unpack_add(field, length, bits, acc) is acc
    np.testing.assert_array_equal(acc, expected)


def test_unpack_add_wraps_and_validates():
    acc = np.full(100, 2**16 - 3, np.uint16)
    unpack_add(pack(np.full(100, 5, np.uint16), 12), 100, 12, acc)
    assert (acc == 2).all()
    packed = pack(np.zeros(100, np.uint16), 12)
    with pytest.raises(TypeError):
        unpack_add(packed, 100, 12, [0] * 100)
    for bad in (np.zeros(99, np.uint16), np.zeros(200, np.uint16)[::2], np.zeros(100, np.uint8)):
        with pytest.raises(ValueError):
            unpack_add(packed, 100, 12, bad)
    frozen = np.zeros(100, np.uint16)
    frozen.flags.writeable = False
    with pytest.raises(ValueError):
        unpack_add(packed, 100, 12, frozen)
    with pytest.raises(ValueError):
        unpack_add(packed[:-1], 100, 12, np.zeros(100, np.uint16))
