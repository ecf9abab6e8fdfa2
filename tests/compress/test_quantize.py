import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield.compress.counter_rng import derive_seed, uint32_reference
from fedshield.compress.quantize import (
    dequantize_chunked,
    dequantize_fixed,
    dequantize_fixed_reference,
    quantize_chunked,
    quantize_chunked_reference,
    quantize_fixed,
    quantize_fixed_reference,
)


def _data(n: int, seed: int = 0, scale: float = 0.05) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, scale, n).astype(np.float32)


@pytest.mark.parametrize("bits", [1, 2, 5, 8, 12, 16])
def test_fixed_kernel_equals_the_numpy_reference(bits):
    x = _data(200_003, bits)
    got = quantize_fixed(x, clip=0.1, bits=bits, seed=99)
    np.testing.assert_array_equal(got, quantize_fixed_reference(x, clip=0.1, bits=bits, seed=99))
    np.testing.assert_array_equal(
        dequantize_fixed(got, clip=0.1, bits=bits),
        dequantize_fixed_reference(got, clip=0.1, bits=bits),
    )
    assert got.max() <= 2**bits - 1


@pytest.mark.parametrize("bits", [1, 4, 8, 16])
def test_chunked_kernel_equals_the_numpy_reference(bits):
    x = _data(10_000, bits) * np.repeat(np.geomspace(1e-4, 10, 10), 1000).astype(np.float32)
    levels, low, step = quantize_chunked(x, bits=bits, seed=7, chunk=1000)
    ref_levels, ref_low, ref_step = quantize_chunked_reference(x, bits=bits, seed=7, chunk=1000)
    np.testing.assert_array_equal(levels, ref_levels)
    np.testing.assert_array_equal(low, ref_low)
    np.testing.assert_array_equal(step, ref_step)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3000),
    bits=st.integers(1, 16),
    chunk=st.integers(1, 700),
    seed=st.integers(0, 2**64 - 1),
)
def test_error_never_exceeds_one_step(n, bits, chunk, seed):
    x = _data(n, seed % 1000, scale=1.0)
    levels, low, step = quantize_chunked(x, bits=bits, seed=seed, chunk=chunk)
    back = dequantize_chunked(levels, low, step, chunk=chunk)
    per_value_step = np.repeat(step, chunk)[:n]
    assert np.all(np.abs(back - x) <= per_value_step * (1 + 1e-5) + 1e-7)
    clipped = np.clip(x, -0.5, 0.5)
    fixed = dequantize_fixed(quantize_fixed(x, clip=0.5, bits=bits, seed=seed), clip=0.5, bits=bits)
    assert np.all(np.abs(fixed - clipped) <= (1.0 / (2**bits - 1)) * (1 + 1e-5))


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_stochastic_rounding_is_unbiased(bits):
    """The mean of many independent quantizations converges to the (clipped) input."""
    x = np.linspace(-0.12, 0.12, 41, dtype=np.float32)  # includes values outside the clip
    step = 0.2 / (2**bits - 1)
    draws = np.stack(
        [
            dequantize_fixed(quantize_fixed(x, clip=0.1, bits=bits, seed=s), clip=0.1, bits=bits)
            for s in range(4000)
        ]
    )
    # Bernoulli rounding: standard error <= step / (2·sqrt(4000)); 5 standard errors.
    assert np.abs(draws.mean(axis=0) - np.clip(x, -0.1, 0.1)).max() < 5 * step / (2 * 63.2)


def test_the_same_seed_reproduces_and_a_new_seed_redraws():
    x = _data(50_000)
    a = quantize_fixed(x, clip=0.1, bits=4, seed=derive_seed("quantize", 0, 1, 2))
    b = quantize_fixed(x, clip=0.1, bits=4, seed=derive_seed("quantize", 0, 1, 2))
    c = quantize_fixed(x, clip=0.1, bits=4, seed=derive_seed("quantize", 0, 1, 3))
    np.testing.assert_array_equal(a, b)
    assert 0.05 < np.mean(a != c) < 0.95


def test_counter_stream_looks_uniform():
    values = uint32_reference(0, 1 << 16, seed=12345) >> np.uint32(28)  # 16 buckets
    counts = np.bincount(values, minlength=16)
    chi2 = ((counts - 4096) ** 2 / 4096).sum()
    assert chi2 < 37.7  # 15 dof, p = 0.001


def test_constant_chunks_and_bad_arguments():
    levels, low, step = quantize_chunked(np.full(10, 0.25, np.float32), bits=8, seed=0, chunk=4)
    np.testing.assert_array_equal(dequantize_chunked(levels, low, step, chunk=4), 0.25)
    with pytest.raises(ValueError):
        quantize_chunked(np.array([0.0, np.nan], np.float32), bits=8, seed=0)
    with pytest.raises(ValueError):
        quantize_fixed(np.zeros(3, np.float32), clip=0.1, bits=17, seed=0)
    with pytest.raises(ValueError):
        quantize_fixed(np.zeros(3, np.float32), clip=0.0, bits=8, seed=0)
    with pytest.raises(ValueError):
        quantize_fixed(np.zeros((2, 2), np.float32), clip=0.1, bits=8, seed=0)
