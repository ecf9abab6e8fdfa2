"""The distributed discrete Gaussian's encoding (Kairouz, Liu, Steinke, "The Distributed Discrete
Gaussian Mechanism for Federated Learning with Secure Aggregation", ICML 2021, Algorithm 1):
how a site turns its update into noisy integers that secure aggregation (or BFV) can sum.

A site (1) clips its update to L2 norm ``c`` (:attr:`inner_clip`, just below ``C``); (2) scales
it by ``1/gamma`` (:attr:`scale` integer units per unit of the update); (3) rounds it to
integers by **conditional randomized rounding**: each value up with probability its
fractional part, again until the rounded vector's L2 norm is at most :attr:`bound`
``B = C · scale`` (``c`` is the largest clip whose rounding the paper's Section 4 bound, with
``beta = exp(-1/2)``, keeps within ``B``; after :data:`ROUNDING_TRIES` failures, nearest
rounding of the vector shrunk to ``B - sqrt(d)/2``, which always fits): so no site's rounded
update exceeds ``C`` in the update's units; (4) adds discrete Gaussian noise of variance
``sigma_site^2`` to every value (:mod:`fedshield.crypto.noise`, from the OS CSPRNG); (5) sends
each value plus the public :attr:`offset`, a level in ``[0, 2 · offset]``.

**Sizing** (:meth:`for_target`): the noise must protect the sum even when only ``t``
(``min_sites``) sites survive, ``c`` of them (``colluders``) known to the adversary, who can
take their noise out: each site adds ``sigma_site = z · B / sqrt(t - c)``, so the noise of the
honest survivors of any sum of ``s >= t`` sites has variance at least
``(s - c) · sigma_site^2 >= (z · B)^2``, the Gaussian mechanism of noise multiplier ``z`` on an
L2 sensitivity of ``B`` integer units.

**No wrap-around.** A site's rounded value lies within ``floor(B)`` of zero (one value's size
is at most the vector's L2 norm) and its noise within ``TAIL_SIGMAS · sigma_site`` (a vector
whose noise reaches past that, with probability below ``d · 4e-33``, is drawn again), so each
level fits :attr:`level_bits` bits, and the sum of ``n`` sites' levels fits
``level_bits + ceil(log2 n)`` bits: the ring (or BFV field) never wraps. The redraw changes
the noise's distribution by less than ``d · 4e-33`` in total variation (a ``delta`` that
small beside the reported one; it is not added).

**Granularity.** ``C · scale`` is a power of two of at least ``2^12`` and at least
``8 sqrt(d)``, so the rounding's room costs well under 1% of the clip (``c / C`` is 0.9997 for
the default CNN), and large enough that ``sigma_site >= 8``: the sum of discrete
Gaussians then has the privacy of one discrete Gaussian up to the paper's Theorem 1 slack,
``tau = 10 sum_{k<n} exp(-2 pi^2 sigma_site^2 k / (k + 1))``, below ``1e-270`` (see
:func:`~fedshield.privacy.accounting.ddg_slack_rho`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from fedshield._validate import check_int, check_real
from fedshield.crypto.noise import csprng_generator, discrete_gaussian

__all__ = ["MIN_SITE_SIGMA", "ROUNDING_TRIES", "TAIL_SIGMAS", "DiscreteGaussianEncoding"]

TAIL_SIGMAS = 12  # a site's noise stays within 12 sigma (else it is drawn again)
ROUNDING_TRIES = 64  # conditional rounding: each try fits with probability >= 1 - exp(-1/2)
MIN_SITE_SIGMA = 8.0  # integer units: keeps the sum's slack (tau) below 1e-270
MIN_SCALE_BITS = 12


@dataclass(frozen=True)
class DiscreteGaussianEncoding:
    """What every party of a round with distributed DP agrees on (all public).

    Args:
        clip: ``C``, the L2 bound of a site's update, in the update's units.
        dim: ``d``, the values per update.
        scale: integer units per unit of the update (``1 / gamma``).
        site_sigma: the standard deviation of each site's discrete Gaussian noise, in integer
            units (0: no noise).
        min_sites: ``t``, the fewest sites a decoded sum may hold.
        colluders: ``c``, how many of those ``t`` may know their own noise to the adversary
            (the noise is sized for the ``t - c`` others).
    """

    clip: float
    dim: int
    scale: float
    site_sigma: float
    min_sites: int
    colluders: int = 0

    def __post_init__(self) -> None:
        for name in ("clip", "scale"):
            if not check_real(name, getattr(self, name), positive=False) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        check_int("dim", self.dim, low=1)
        check_int("min_sites", self.min_sites, low=1)
        check_int("colluders", self.colluders, low=0, high=self.min_sites - 1)
        sigma = check_real("site_sigma", self.site_sigma, positive=False)
        if sigma != 0 and not sigma >= MIN_SITE_SIGMA:
            raise ValueError(f"site_sigma must be 0 or at least {MIN_SITE_SIGMA}, got {sigma}")

    @classmethod
    def for_target(
        cls, *, clip: float, dim: int, noise_multiplier: float, min_sites: int,
        colluders: int = 0,
    ) -> DiscreteGaussianEncoding:  # fmt: skip
        """The encoding whose summed noise, over any ``min_sites`` or more sites less
        ``colluders`` of them, is the Gaussian mechanism of ``noise_multiplier`` on the
        sensitivity :attr:`bound`."""
        z = check_real("noise_multiplier", noise_multiplier, positive=False)
        check_int("dim", dim, low=1)
        check_int("min_sites", min_sites, low=1)
        honest = min_sites - check_int("colluders", colluders, low=0, high=min_sites - 1)
        bits = max(MIN_SCALE_BITS, math.ceil(math.log2(8 * math.sqrt(dim))))
        if z > 0:  # sigma_site = z B / sqrt(h) >= z 2^bits / sqrt(h) must reach MIN_SITE_SIGMA
            bits = max(bits, math.ceil(math.log2(MIN_SITE_SIGMA * math.sqrt(honest) / z)))
        scale = 2.0**bits / clip
        sigma = z * clip * scale / math.sqrt(honest)
        return cls(clip=clip, dim=dim, scale=scale, site_sigma=sigma, min_sites=min_sites,
                   colluders=colluders)  # fmt: skip

    @property
    def bound(self) -> float:
        """``B = C · scale``: the L2 norm no site's rounded vector exceeds (integer units)."""
        return self.clip * self.scale

    @property
    def inner_clip(self) -> float:
        """``c``: the clip before rounding, the largest whose rounding bound fits ``B``."""
        low, high = 0.0, self.bound  # bisection: the rounding bound grows with the clip
        for _ in range(64):
            middle = (low + high) / 2
            low, high = (
                (middle, high) if _rounding_bound(middle, self.dim) <= self.bound else (low, middle)
            )
        return low / self.scale

    @property
    def noise_multiplier(self) -> float:
        """``z``: the noise of ``min_sites - colluders`` sites over the sensitivity
        :attr:`bound`."""
        return self.site_sigma * math.sqrt(self.min_sites - self.colluders) / self.bound

    @property
    def tail(self) -> int:
        """The most any single noise value may be (``TAIL_SIGMAS`` sigma)."""
        return math.ceil(TAIL_SIGMAS * self.site_sigma)

    @property
    def offset(self) -> int:
        """Added to every value so that a level is never negative."""
        return math.floor(self.bound) + self.tail

    @property
    def level_bits(self) -> int:
        """Bits of one level (at most ``2 · offset``)."""
        return (2 * self.offset).bit_length()

    def sum_bits(self, n: int) -> int:
        """Bits that hold the sum of ``n`` sites' levels without wrapping."""
        check_int("n", n, low=1)
        return self.level_bits + (math.ceil(math.log2(n)) if n > 1 else 0)

    def describe(self) -> dict:
        """The public parameters and the level width, as plain data."""
        return {**asdict(self), "bound": self.bound, "level_bits": self.level_bits}

    def clipped(self, update: np.ndarray) -> np.ndarray:
        """``update`` (float64) scaled down to L2 norm at most :attr:`inner_clip`.

        Raises:
            ValueError: ``update`` holds NaN or infinity (no norm bounds it).
        """
        values = np.array(update, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError("the update holds NaN or infinite values: no clip bounds it")
        norm, clip = float(np.linalg.norm(values)), self.inner_clip
        if norm > clip:
            values *= clip / norm
        return values

    def encode(self, update: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """A site's levels (int64, each in ``[0, 2 · offset]``): its update clipped, scaled,
        rounded to norm ``B`` and noised. ``rng``: default a fresh CSPRNG-seeded generator."""
        if np.size(update) != self.dim:
            raise ValueError(f"the encoding is for {self.dim} values, got {np.size(update)}")
        rng = csprng_generator() if rng is None else rng
        levels = self.rounded(self.clipped(update) * self.scale, rng)
        if self.site_sigma > 0:
            levels += self.noise(rng)
        levels += self.offset
        return levels

    def rounded(self, scaled: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Conditional randomized rounding of ``scaled`` to an int64 vector of norm ``<= B``."""
        bound2, low = self.bound**2, np.floor(scaled)
        up_chance = scaled - low
        for _ in range(ROUNDING_TRIES):
            rounded = low + (rng.random(scaled.size) < up_chance)
            if float(np.dot(rounded, rounded)) <= bound2:
                return rounded.astype(np.int64)
        shrink = max(0.0, self.bound - math.sqrt(self.dim) / 2) / max(np.linalg.norm(scaled), 1)
        return np.rint(scaled * min(1.0, shrink)).astype(np.int64)

    def noise(self, rng: np.random.Generator) -> np.ndarray:
        """One site's discrete Gaussian noise, every value within :attr:`tail`."""
        while True:
            draws = discrete_gaussian(self.site_sigma**2, self.dim, rng)
            if np.abs(draws).max(initial=0) <= self.tail:
                return draws

    def decode_sum(self, level_sum: np.ndarray, count: int) -> np.ndarray:
        """The float64 sum, in the update's units, from the sum of ``count`` sites' levels
        (the noise stays in it)."""
        total = level_sum.astype(np.int64) - np.int64(count * self.offset)
        return total / self.scale

    def check_sum(self, level_sum: np.ndarray, count: int) -> None:
        """Raise ``ValueError`` unless ``level_sum`` is a sum ``count`` sites could send,
        and ``count`` is at least :attr:`min_sites` (fewer would carry too little noise)."""
        if count < self.min_sites:
            raise ValueError(
                f"the sum holds {count} sites, fewer than the {self.min_sites} its noise is "
                "sized for (it would carry less than the target noise)"
            )
        if level_sum.size and int(level_sum.max()) > count * 2 * self.offset:
            raise ValueError(f"the decoded sum is outside what {count} sites can send")


def _rounding_bound(scaled_clip: float, dim: int) -> float:
    """Kairouz et al.'s bound for conditional randomized rounding with ``beta = exp(-1/2)``:
    ``min(c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2), (c + sqrt(d))^2)``, square-rooted."""
    root_d = math.sqrt(dim)
    likely = scaled_clip**2 + dim / 4 + (scaled_clip + root_d / 2)
    return math.sqrt(min(likely, (scaled_clip + root_d) ** 2))
