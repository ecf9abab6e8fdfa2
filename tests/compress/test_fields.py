"""Several values per 64-bit slot: the kernels against their numpy oracles, and the layout."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield.compress.fields import (
    pack_fields,
    pack_fields_reference,
    unpack_fields,
    unpack_fields_reference,
)


@settings(max_examples=40, deadline=None)
@given(
    per_slot=st.integers(1, 5),
    bits=st.integers(1, 12),
    slots=st.sampled_from([1, 7, 64]),
    length=st.integers(0, 2000),
    scale=st.integers(1, 15),
    seed=st.integers(0, 2**16),
)
def test_kernels_equal_the_references_and_round_trip(per_slot, bits, slots, length, scale, seed):
    top = (1 << bits) - 1
    values = np.random.default_rng(seed).integers(0, top // scale + 1, length, dtype=np.uint64)
    per_row = slots * per_slot
    rows = max(1, -(-length // per_row))
    layout = {"rows": rows, "slots": slots, "per_slot": per_slot, "bits": bits}
    packed = pack_fields(values.astype(np.uint16), scale=scale, **layout)
    np.testing.assert_array_equal(packed, pack_fields_reference(values, scale=scale, **layout))
    unpack = {"length": length, "per_slot": per_slot, "bits": bits}
    np.testing.assert_array_equal(unpack_fields(packed, **unpack), values * np.uint64(scale))
    np.testing.assert_array_equal(
        unpack_fields_reference(packed, **unpack), values * np.uint64(scale)
    )


def test_layout_fields_are_apart_and_sums_add_field_by_field():
    """Value i of a row sits in field i // slots of slot i % slots; adding packed rows adds
    every field on its own while no field's sum outgrows its bits."""
    values = np.arange(8, dtype=np.uint8)  # one row of 4 slots, 2 fields of 5 bits
    packed = pack_fields(values, rows=1, slots=4, per_slot=2, bits=5)
    assert packed.tolist() == [[0 | 4 << 5, 1 | 5 << 5, 2 | 6 << 5, 3 | 7 << 5]]
    total = packed * np.uint64(4)  # four sites with the same values: 4 * 7 = 28 < 32
    np.testing.assert_array_equal(
        unpack_fields(total, length=8, per_slot=2, bits=5), values.astype(np.uint64) * 4
    )


def test_bad_layouts_are_refused():
    with pytest.raises(ValueError, match="do not fit a 64-bit slot"):
        pack_fields(np.zeros(4, np.uint8), rows=1, slots=4, per_slot=3, bits=22)
    with pytest.raises(ValueError, match="do not fit"):
        pack_fields(np.zeros(9, np.uint8), rows=1, slots=4, per_slot=2, bits=8)
    with pytest.raises(TypeError, match="unsigned"):
        pack_fields(np.zeros(4, np.int32), rows=1, slots=4, per_slot=1, bits=8)
