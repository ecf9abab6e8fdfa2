"""An exact sampler of the discrete Gaussian, the integer noise distributed DP adds inside
secure aggregation (Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for
Federated Learning with Secure Aggregation", ICML 2021).

Canonne, Kamath, Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020,
Algorithms 1 to 3: Bernoulli(exp(-gamma)) from Bernoulli trials alone, discrete Laplace by
rejection, discrete Gaussian by rejection from the discrete Laplace. Every step works on exact
rationals (``fractions.Fraction``) and draws its integers from the operating system's CSPRNG
(``secrets.randbelow``): no floating point can bias the distribution, and no seed known to
anyone else drives it. :math:`P[X = x] \\propto \\exp(-x^2 / (2 \\sigma^2))` over the integers.
"""

from __future__ import annotations

import math
import secrets
from fractions import Fraction

import numpy as np

__all__ = ["discrete_gaussian", "discrete_gaussian_pmf"]


def _bernoulli(p: Fraction) -> bool:
    """True with probability ``p`` (a rational in [0, 1])."""
    return secrets.randbelow(p.denominator) < p.numerator


def _bernoulli_exp(gamma: Fraction) -> bool:
    """True with probability ``exp(-gamma)``, ``gamma >= 0`` (CKS Algorithm 1)."""
    while gamma > 1:  # exp(-gamma) = exp(-1)^floor(gamma) * exp(-(gamma - floor(gamma)))
        if not _bernoulli_exp(Fraction(1)):
            return False
        gamma -= 1
    k = 1
    while _bernoulli(gamma / k):
        k += 1
    return k % 2 == 1


def _discrete_laplace(t: int) -> int:
    """``P[X = x] ∝ exp(-|x| / t)`` over the integers, ``t >= 1`` (CKS Algorithm 2)."""
    while True:
        u = secrets.randbelow(t)
        if not _bernoulli_exp(Fraction(u, t)):
            continue
        v = 0
        while _bernoulli_exp(Fraction(1)):
            v += 1
        x = u + t * v
        negative = secrets.randbelow(2) == 1
        if negative and x == 0:
            continue
        return -x if negative else x


def _one(sigma2: Fraction) -> int:
    """One draw of the discrete Gaussian of parameter ``sigma2`` (CKS Algorithm 3)."""
    t = math.isqrt(math.floor(sigma2)) + 1  # floor(sigma) + 1, exactly
    while True:
        y = _discrete_laplace(t)
        gamma = (abs(y) - sigma2 / t) ** 2 / (2 * sigma2)
        if _bernoulli_exp(gamma):
            return y


def discrete_gaussian(sigma2: Fraction | int, size: int) -> np.ndarray:
    """``size`` independent draws of the discrete Gaussian with ``sigma^2 = sigma2`` (a
    positive rational), as int64."""
    sigma2 = Fraction(sigma2)
    if not sigma2 > 0:
        raise ValueError(f"sigma2 must be positive, got {sigma2}")
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    return np.fromiter((_one(sigma2) for _ in range(size)), dtype=np.int64, count=size)


def discrete_gaussian_pmf(sigma2: float, support: np.ndarray) -> np.ndarray:
    """The discrete Gaussian's probabilities on ``support`` (normalized over the integers
    within 40 sigma, where the rest is below float precision): the tests' oracle."""
    sigma = float(sigma2) ** 0.5
    span = np.arange(-int(40 * sigma) - 1, int(40 * sigma) + 2)
    total = np.exp(-(span.astype(np.float64) ** 2) / (2 * float(sigma2))).sum()
    return np.exp(-(np.asarray(support, dtype=np.float64) ** 2) / (2 * float(sigma2))) / total
