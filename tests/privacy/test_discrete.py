"""The discrete Gaussian sampler against its pmf: mean, variance, a chi-square test, and its
randomness from the OS CSPRNG."""

from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from fedshield.privacy import discrete
from fedshield.privacy.discrete import discrete_gaussian, discrete_gaussian_pmf


@pytest.mark.parametrize("sigma2", [Fraction(1, 2), 4, Fraction(49, 2)])
def test_draws_follow_the_pmf(sigma2):
    draws = discrete_gaussian(sigma2, 20_000)
    support = np.arange(draws.min(), draws.max() + 1)
    pmf = discrete_gaussian_pmf(float(sigma2), support)
    variance = float((pmf * support.astype(float) ** 2).sum())  # just below sigma2
    assert abs(draws.mean()) < 4 * (variance / draws.size) ** 0.5
    assert draws.var() == pytest.approx(variance, rel=0.05)
    # chi-square over bins with at least 20 expected draws, the tails pooled
    expected = pmf * draws.size
    keep = expected >= 20
    observed = np.array([(draws == x).sum() for x in support[keep]])
    observed = np.append(observed, draws.size - observed.sum())
    expected = np.append(expected[keep], draws.size - expected[keep].sum())
    assert stats.chisquare(observed, expected).pvalue > 1e-4


def test_the_randomness_is_the_os_csprng(monkeypatch):
    """Pinning secrets.randbelow (and only that) pins every draw."""
    counter = iter(range(10**9))
    monkeypatch.setattr(discrete.secrets, "randbelow", lambda n: next(counter) * 7919 % n)
    first = discrete_gaussian(9, 50)
    counter = iter(range(10**9))
    assert np.array_equal(first, discrete_gaussian(9, 50))


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="sigma2 must be positive"):
        discrete_gaussian(0, 3)
    with pytest.raises(ValueError, match="size"):
        discrete_gaussian(1, -1)
