"""The discrete Gaussian sampler against its pmf: mean, variance, a chi-square test, and its
randomness from the OS CSPRNG."""

import numpy as np
import pytest
from scipy import stats

from fedshield.crypto import noise
from fedshield.crypto.noise import discrete_gaussian, discrete_gaussian_pmf


@pytest.mark.parametrize("sigma2", [0.5, 4, 24.5, 2370.0**2])
def test_draws_follow_the_pmf(sigma2):
    draws = discrete_gaussian(sigma2, 20_000)
    support = np.arange(draws.min(), draws.max() + 1)
    pmf = discrete_gaussian_pmf(float(sigma2), support)
    variance = float((pmf * support.astype(float) ** 2).sum())  # just below sigma2
    assert abs(draws.mean()) < 4 * (variance / draws.size) ** 0.5
    assert draws.var() == pytest.approx(variance, rel=0.05)
    # chi-square over 40 bins of near-equal probability under the pmf (tails in the ends)
    span = np.arange(-int(12 * variance**0.5) - 2, int(12 * variance**0.5) + 3)
    cdf = np.cumsum(discrete_gaussian_pmf(float(sigma2), span))
    edges = np.unique(np.searchsorted(cdf, np.linspace(0, 1, 41)[1:-1]))
    expected = np.diff(np.concatenate(([0.0], cdf[edges], [1.0]))) * draws.size
    observed = np.bincount(np.searchsorted(span[edges], draws, side="left"),
                           minlength=expected.size)  # fmt: skip
    assert stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 1e-4


def test_the_randomness_is_the_os_csprng(monkeypatch):
    """Pinning secrets.randbits (and only that) pins every draw; left alone, two draws
    differ."""
    assert not np.array_equal(discrete_gaussian(9, 50), discrete_gaussian(9, 50))
    monkeypatch.setattr(noise.secrets, "randbits", lambda k: 12345)
    assert np.array_equal(discrete_gaussian(9, 50), discrete_gaussian(9, 50))


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="sigma2 must be positive"):
        discrete_gaussian(0, 3)
    with pytest.raises(ValueError, match="size"):
        discrete_gaussian(1, -1)
