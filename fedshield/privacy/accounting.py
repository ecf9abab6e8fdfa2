"""Privacy accounting for site-level DP-FedAvg through Google's ``dp-accounting`` library: the
history of a run is a :class:`dp_accounting.DpEvent` (a Gaussian mechanism per round, Poisson
sampled when sites are sampled), and the library's RDP accountant turns it into epsilon at a
delta. We write no formula of our own: calibration searches the library's own answer.

Neighbouring datasets differ in one site's data (add or remove a site): a site's clipped update
has L2 sensitivity ``C``, so Gaussian noise of standard deviation ``sigma * C`` on the sum is the
Gaussian mechanism with noise multiplier ``sigma``.
"""

from __future__ import annotations

import contextlib
import logging

import dp_accounting
from dp_accounting.rdp import RdpAccountant

from fedshield._validate import check_int, check_real
from fedshield.errors import ConfigError

__all__ = ["calibrate_noise", "dp_event", "epsilon"]


def dp_event(
    noise_multiplier: float, rounds: int, sampling_rate: float = 1.0
) -> dp_accounting.DpEvent:
    """``rounds`` Gaussian mechanisms of ``noise_multiplier``, each Poisson-sampled at
    ``sampling_rate`` (the chance a site takes part in a round) when it is below 1."""
    check_real("noise_multiplier", noise_multiplier, positive=False)
    check_int("rounds", rounds, low=0)
    if noise_multiplier < 0 or not 0 < sampling_rate <= 1:
        raise ValueError(
            f"noise_multiplier must be >= 0 and sampling_rate in (0, 1], got "
            f"{noise_multiplier} and {sampling_rate}"
        )
    step: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1.0:
        step = dp_accounting.PoissonSampledDpEvent(sampling_rate, step)
    return dp_accounting.SelfComposedDpEvent(step, rounds)


def epsilon(
    noise_multiplier: float, rounds: int, delta: float, sampling_rate: float = 1.0
) -> float:
    """Epsilon at ``delta`` after ``rounds`` rounds (``inf`` without noise)."""
    if not 0 < check_real("delta", delta) < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    accountant = RdpAccountant()
    with _quiet_library():
        accountant.compose(dp_event(noise_multiplier, rounds, sampling_rate))
        return float(accountant.get_epsilon(delta))


@contextlib.contextmanager
def _quiet_library():
    """The library logs each fractional RDP order it skips (it then uses the others: the
    epsilon stays an upper bound); keep those warnings out of a run's output."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def calibrate_noise(
    target_epsilon: float, delta: float, rounds: int, sampling_rate: float = 1.0,
    *, unit: str = "rounds",
) -> float:  # fmt: skip
    """The smallest noise multiplier whose epsilon after ``rounds`` mechanisms (``unit``, in
    messages: rounds, or DP-SGD's steps) is at most ``target_epsilon``, found by the
    library's calibration.

    Raises:
        ConfigError: no noise multiplier up to 1000 reaches the target.
    """
    if not check_real("target_epsilon", target_epsilon, positive=False) > 0:
        raise ConfigError(f"--dp-epsilon must be positive, got {target_epsilon}")
    try:
        with _quiet_library():
            sigma = dp_accounting.calibrate_dp_mechanism(
                RdpAccountant,
                lambda s: dp_event(s, rounds, sampling_rate),
                target_epsilon,
                delta,
                dp_accounting.ExplicitBracketInterval(1e-3, 1e3),
                tol=1e-6,
            )
    except (ValueError, dp_accounting.mechanism_calibration.NoBracketIntervalFoundError):
        raise ConfigError(
            f"no noise multiplier up to 1000 reaches epsilon {target_epsilon} at delta {delta} "
            f"over {rounds} {unit}: raise --dp-epsilon or --dp-delta, or plan fewer rounds"
        ) from None
    return float(sigma)
