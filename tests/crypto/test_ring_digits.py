"""Weights as base-2^q digits (fraction weighting): exact round trip, and digit sums decode to
the sum of the weights without any digit carrying over."""

from hypothesis import given
from hypothesis import strategies as st

from fedshield.crypto import ring


@given(st.integers(1, 16), st.lists(st.integers(0, 2**24 - 1), min_size=1, max_size=50))
def test_digit_sums_decode_to_the_sum_of_the_values(quant_bits, values):
    count = -(-24 // quant_bits)
    digits = [ring.to_digits(v, quant_bits=quant_bits, count=count) for v in values]
    assert all(0 <= d < 2**quant_bits for row in digits for d in row)
    assert [ring.from_digits(row, quant_bits=quant_bits) for row in digits] == values
    summed = [sum(column) for column in zip(*digits, strict=True)]
    assert ring.from_digits(summed, quant_bits=quant_bits) == sum(values)


def test_the_weight_fraction_of_the_top_weight_is_one():
    assert ring.weight_fraction(255, 8) == 1.0 and ring.weight_fraction(51, 8) == 0.2
    assert ring.weight_fraction(1, 0) == 1.0  # unweighted
