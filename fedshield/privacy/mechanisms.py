"""Site-level DP-FedAvg's two steps (McMahan et al., ICLR 2018): at each site, clip the update
to L2 norm ``C`` (and under ``local``, add the noise itself); at the server, under ``central``,
add Gaussian noise of standard deviation ``sigma * C`` to the sum of the clipped updates, then
divide by the planned number of sites (the fixed denominator of the paper's estimator: the
count of survivors is not what the noise protects).

The noise never comes from the run's seed: the server and every site derive their stochastic
rounding from ``--seed``, so noise drawn from it would be known to all. Each
:class:`SiteLevelDP` seeds its generator from the operating system's CSPRNG
(``secrets.randbits``), and every draw is fresh.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np

from fedshield._validate import check_int, check_real
from fedshield.errors import ConfigError
from fedshield.privacy.accounting import calibrate_noise, epsilon

__all__ = ["MODES", "DPConfig", "SiteLevelDP", "clip_l2", "gaussian_noise", "spent_record"]

MODES = ("central", "local", "distributed")


@dataclass(frozen=True)
class DPConfig:
    """Site-level DP-FedAvg's public parameters.

    Attributes:
        mode: ``central`` (the server adds the noise to the sum it learns), ``local``
            (each site adds it to its own update) or ``distributed`` (each site adds
            integer noise inside secure aggregation or BFV, so that the sum of any ``t`` or
            more sites carries it all: :mod:`fedshield.crypto.ddg`).
        clip: ``C``, the L2 bound of every site's update.
        noise_multiplier: ``sigma``: the noise's standard deviation is ``sigma * C``.
        delta: the delta of the reported (epsilon, delta).
        rounds: the planned rounds (the calibration's horizon).
        sites: the planned sites per round (the fixed denominator).
        colluders: ``distributed`` only: how many sites of a sum may give their own noise
            away (to the server, or read the model knowing it); ``None``: 1, a site that
            reads the aggregate knowing its own noise (0 when a round may hold one site).
    """

    mode: str
    clip: float
    noise_multiplier: float
    delta: float
    rounds: int
    sites: int
    colluders: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"--dp-mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not check_real("clip", self.clip, positive=False, error=ConfigError) > 0:
            raise ConfigError(f"--dp-clip must be positive, got {self.clip}")
        if check_real("noise_multiplier", self.noise_multiplier, positive=False) < 0:
            raise ConfigError(f"--dp-noise must be >= 0, got {self.noise_multiplier}")
        if not 0 < check_real("delta", self.delta, error=ConfigError) < 1:
            raise ConfigError(f"--dp-delta must be in (0, 1), got {self.delta}")
        check_int("rounds", self.rounds, low=1)
        check_int("sites", self.sites, low=1)
        check_int("colluders", self.colluders, low=0, optional=True, error=ConfigError)
        if self.colluders is not None and self.mode != "distributed":
            raise ConfigError("--dp-colluders sizes --dp-mode distributed's noise only")

    @classmethod
    def calibrated(
        cls, *, mode: str, clip: float, target_epsilon: float, delta: float, rounds: int,
        sites: int, colluders: int | None = None,
    ) -> DPConfig:  # fmt: skip
        """The config whose noise reaches ``target_epsilon`` after the planned ``rounds``
        (:func:`~fedshield.privacy.accounting.calibrate_noise`)."""
        sigma = calibrate_noise(target_epsilon, delta, rounds)
        return cls(mode=mode, clip=clip, noise_multiplier=sigma, delta=delta, rounds=rounds,
                   sites=sites, colluders=colluders)  # fmt: skip

    @property
    def noise_std(self) -> float:
        """The standard deviation of the noise on each coordinate of the sum: ``sigma * C``."""
        return self.noise_multiplier * self.clip

    def epsilon_after(self, rounds: int) -> float:
        """Epsilon at :attr:`delta` after ``rounds`` rounds (the library's RDP accountant)."""
        return epsilon(self.noise_multiplier, rounds, self.delta)

    def describe(self, rounds: int) -> dict:
        """What a round record carries after ``rounds`` rounds (:func:`spent_record`)."""
        return spent_record(
            self.mode, clip=self.clip, noise_multiplier=self.noise_multiplier,
            delta=self.delta, epsilon=self.epsilon_after(rounds),
        )  # fmt: skip


def spent_record(
    mode: str, *, clip: float, noise_multiplier: float, delta: float, epsilon: float
) -> dict:  # fmt: skip
    """The privacy fields of a round record (``result.json``): ``dp_mode``, ``clip``,
    ``noise_multiplier``, ``delta`` and the ``epsilon`` spent (``None``: unbounded)."""
    return {
        "dp_mode": mode,
        "clip": clip,
        "noise_multiplier": noise_multiplier,
        "delta": delta,
        "epsilon": epsilon if math.isfinite(epsilon) else None,
    }


def clip_l2(update: np.ndarray, clip: float) -> np.ndarray:
    """A float32 copy of ``update`` scaled down to L2 norm at most ``clip`` (the norm is taken
    in float64, and the scale leaves a margin for float32 rounding)."""
    values = np.asarray(update, dtype=np.float32)
    norm = float(np.linalg.norm(values.astype(np.float64)))
    if norm <= clip:
        return values.copy()
    return values * np.float32(clip / norm * (1 - 1e-6))


def gaussian_noise(size: int, std: float, rng: np.random.Generator) -> np.ndarray:
    """``size`` independent N(0, std^2) draws, float64."""
    return rng.normal(0.0, std, size)


class SiteLevelDP:
    """DP-FedAvg at a site (:meth:`at_site`) and at the server (:meth:`at_server`), with a
    generator seeded from the OS CSPRNG (one per instance: per site, and the server's)."""

    def __init__(self, config: DPConfig) -> None:
        if not isinstance(config, DPConfig):
            raise TypeError(f"config must be a DPConfig, got {type(config).__name__}")
        self.config = config
        self._rng = np.random.default_rng(secrets.randbits(128))

    def at_site(self, update: np.ndarray) -> np.ndarray:
        """The update a site sends: clipped to ``C``; under ``local``, plus its noise (under
        ``distributed`` the protocol's encoding adds it)."""
        clipped = clip_l2(update, self.config.clip)
        if self.config.mode == "local" and self.config.noise_std > 0:
            clipped += gaussian_noise(clipped.size, self.config.noise_std, self._rng).astype(
                np.float32
            )
        return clipped

    def at_server(self, weighted_sum: np.ndarray) -> tuple[np.ndarray, float]:
        """``(sum, denominator)`` the server averages: under ``central`` the sum plus its
        noise (the other modes' noise is in the sum already); the denominator is the planned
        number of sites."""
        total = np.asarray(weighted_sum, dtype=np.float64)
        if self.config.mode == "central" and self.config.noise_std > 0:
            total = total + gaussian_noise(total.size, self.config.noise_std, self._rng)
        return total, float(self.config.sites)
