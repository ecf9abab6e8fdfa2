import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield.compress.sparsify import (
    k_for,
    randk,
    randk_reference,
    topk_exact,
    topk_reference,
    topk_sampled,
)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 5000),
    fraction=st.floats(0.0001, 1.0),
    rounding=st.sampled_from([None, 1, 3]),
    seed=st.integers(0, 10_000),
)
def test_exact_topk_equals_a_stable_sort(n, fraction, rounding, seed):
    x = np.random.default_rng(seed).normal(0, 1, n).astype(np.float32)
    if rounding is not None:
        x = np.round(x, rounding)  # many ties, including across signs
    k = k_for(n, fraction)
    np.testing.assert_array_equal(topk_exact(x, k), topk_reference(x, k))


def test_exact_topk_on_a_large_vector():
    x = np.random.default_rng(1).standard_cauchy(1_000_003).astype(np.float32)
    for k in (1, 10_000, 1_000_003):
        np.testing.assert_array_equal(topk_exact(x, k), topk_reference(x, k))


def test_sampled_topk_is_close_to_exact():
    x = np.random.default_rng(2).normal(0, 1, 400_000).astype(np.float32)
    k = 4000
    approx = topk_sampled(x, k, seed=3)
    assert abs(approx.size - k) < 0.2 * k
    assert np.all(np.diff(approx) > 0)
    assert np.isin(approx, topk_exact(x, k)).mean() > 0.8
    small = np.arange(100, dtype=np.float32)
    np.testing.assert_array_equal(topk_sampled(small, 5, seed=0), [95, 96, 97, 98, 99])


def test_randk_is_shared_by_seed_and_changes_with_it():
    a = randk(100_000, 1000, seed=42)
    np.testing.assert_array_equal(a, randk(100_000, 1000, seed=42))  # another client, same round
    np.testing.assert_array_equal(a, randk_reference(100_000, 1000, seed=42))
    b = randk(100_000, 1000, seed=43)  # next round
    assert a.size == b.size == 1000 and np.all(np.diff(a) > 0)
    assert np.intersect1d(a, b).size < 60  # independent subsets overlap by ~10


def test_randk_covers_every_index_uniformly():
    dim, k = 100, 10
    hits = np.zeros(dim)
    for seed in range(2000):
        hits[randk(dim, k, seed=seed)] += 1
    expected = 2000 * k / dim
    assert ((hits - expected) ** 2 / expected).sum() < 148  # 99 dof, p ~ 0.001


def test_arguments_are_checked():
    with pytest.raises(ValueError):
        topk_exact(np.zeros(3, np.float32), 4)
    with pytest.raises(ValueError):
        randk(10, 0, seed=0)
    with pytest.raises(ValueError):
        k_for(10, 0.0)
    assert k_for(10, 0.1) == 1 and k_for(1000, 0.1) == 100


def test_randk_blocks_partition_one_random_order():
    dim, k = 10_007, 1000
    blocks = [randk(dim, k, seed=9, block=b) for b in range(dim // k)]
    for b, got in enumerate(blocks):
        np.testing.assert_array_equal(got, randk_reference(dim, k, seed=9, block=b))
        assert got.size == k
    union = np.concatenate(blocks)
    assert np.unique(union).size == union.size == k * (dim // k)  # disjoint
    with pytest.raises(ValueError):
        randk(dim, k, seed=9, block=dim // k)
