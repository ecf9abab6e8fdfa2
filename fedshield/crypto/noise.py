"""The discrete Gaussian, the integer noise that distributed differential privacy adds inside
secure aggregation and HE (Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism
for Federated Learning with Secure Aggregation", ICML 2021).

``P[X = x] ∝ exp(-x^2 / (2 sigma^2))`` over the integers, sampled as Canonne, Kamath, Steinke,
"The Discrete Gaussian for Differential Privacy" (NeurIPS 2020), Algorithm 3 does, on whole
vectors at once: draw a discrete Laplace candidate ``Y = G1 - G2`` (two geometric draws, so
``P[Y = y] ∝ exp(-|y| / t)`` with ``t = floor(sigma) + 1``) and accept it with probability
``exp(-(|Y| - sigma^2 / t)^2 / (2 sigma^2))``. The outputs are integers: floating point enters
only the geometric draws and the acceptance probabilities (float64, a relative error near
1e-16 in the pmf), never the values themselves, the weakness of floating-point Laplace noise
(Mironov, CCS 2012).

Every generator is seeded from the operating system's CSPRNG (``secrets.randbits``), never
from the run's seed, which the server knows.
"""

from __future__ import annotations

import secrets

import numpy as np

from fedshield._validate import check_int, check_real

__all__ = ["csprng_generator", "discrete_gaussian", "discrete_gaussian_pmf"]


def csprng_generator() -> np.random.Generator:
    """A numpy generator seeded with 256 bits from the OS CSPRNG (fresh at every call)."""
    return np.random.default_rng(secrets.randbits(256))


def discrete_gaussian(
    sigma2: float, size: int, rng: np.random.Generator | None = None
) -> np.ndarray:  # fmt: skip
    """``size`` independent draws of the discrete Gaussian with parameter ``sigma^2 = sigma2``,
    as int64. ``rng``: a generator (default: a fresh :func:`csprng_generator`)."""
    sigma2 = check_real("sigma2", sigma2, positive=False)
    if not sigma2 > 0:
        raise ValueError(f"sigma2 must be positive, got {sigma2}")
    check_int("size", size, low=0)
    rng = csprng_generator() if rng is None else rng
    t = float(np.floor(np.sqrt(sigma2)) + 1)
    p = -np.expm1(-1.0 / t)  # geometric success probability: P[G = k] ∝ exp(-k / t)
    out = np.empty(size, dtype=np.int64)
    filled = 0
    while filled < size:
        want = size - filled
        batch = want + want // 2 + 16  # about 60% or more are accepted
        y = rng.geometric(p, batch) - rng.geometric(p, batch)
        gap = np.abs(y) - sigma2 / t
        accepted = y[rng.random(batch) < np.exp(-(gap * gap) / (2 * sigma2))][:want]
        out[filled : filled + accepted.size] = accepted
        filled += accepted.size
    return out


def discrete_gaussian_pmf(sigma2: float, support: np.ndarray) -> np.ndarray:
    """The discrete Gaussian's probabilities on ``support`` (normalized over the integers
    within 40 sigma, where the rest is below float precision): the tests' oracle."""
    sigma = float(sigma2) ** 0.5
    span = np.arange(-int(40 * sigma) - 1, int(40 * sigma) + 2)
    total = np.exp(-(span.astype(np.float64) ** 2) / (2 * float(sigma2))).sum()
    return np.exp(-(np.asarray(support, dtype=np.float64) ** 2) / (2 * float(sigma2))) / total
