"""The server's one-pass running sum against numpy's (bit for bit) and its finiteness check."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedshield.compress.accumulate import add_scaled, add_scaled_reference, all_finite


@settings(max_examples=50, deadline=None)
@given(
    values=arrays(np.float32, st.integers(0, 300), elements=st.floats(-1e6, 1e6, width=32)),
    weight=st.floats(1e-6, 1e6),
)
def test_add_scaled_is_numpys_sum_bit_for_bit(values, weight):
    rng = np.random.default_rng(values.size)
    acc = rng.normal(size=values.size)
    expected = acc.copy()
    add_scaled_reference(expected, weight, values)
    add_scaled(acc, weight, values)
    np.testing.assert_array_equal(acc, expected)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_finds_one_bad_value_anywhere(bad):
    values = np.zeros(10_001, np.float32)
    assert all_finite(values)
    for where in (0, 5_000, 10_000):
        probe = values.copy()
        probe[where] = bad
        assert not all_finite(probe)


def test_add_scaled_refuses_mismatched_arrays():
    with pytest.raises(TypeError, match="float64"):
        add_scaled(np.zeros(3, np.float32), 1.0, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="shape"):
        add_scaled(np.zeros(3), 1.0, np.zeros(4, np.float32))
