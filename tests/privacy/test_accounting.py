"""Accounting goes through dp-accounting: our epsilon is the library's own answer for the same
history, and calibration reaches its target."""

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from fedshield.errors import ConfigError
from fedshield.privacy import calibrate_noise, epsilon

CASES = [(0.8, 10, 1e-5, 1.0), (1.5, 50, 1e-6, 1.0), (1.1, 100, 1e-5, 0.25), (3.0, 5, 1e-3, 0.5)]


@pytest.mark.parametrize(("sigma", "rounds", "delta", "q"), CASES)
def test_epsilon_is_the_libraries_answer_for_the_same_history(sigma, rounds, delta, q):
    """The history as the engine lives it, one round after another, composed in the library."""
    accountant = RdpAccountant()
    for _ in range(rounds):
        step = dp_accounting.GaussianDpEvent(sigma)
        accountant.compose(step if q == 1 else dp_accounting.PoissonSampledDpEvent(q, step))
    assert epsilon(sigma, rounds, delta, q) == pytest.approx(accountant.get_epsilon(delta))


def test_rdp_is_close_to_and_above_the_tighter_pld_answer():
    """A sanity check on the accountant choice: RDP is an upper bound of PLD's epsilon."""
    pld = PLDAccountant()
    pld.compose(dp_accounting.GaussianDpEvent(1.0), 20)
    assert pld.get_epsilon(1e-5) <= epsilon(1.0, 20, 1e-5) <= 1.5 * pld.get_epsilon(1e-5)


@pytest.mark.parametrize("target", [1.0, 2.0, 4.0, 8.0])
@pytest.mark.parametrize("rounds", [5, 40])
def test_calibrated_noise_reaches_the_target_within_one_percent(target, rounds):
    sigma = calibrate_noise(target, 1e-5, rounds)
    spent = epsilon(sigma, rounds, 1e-5)
    assert 0.99 * target <= spent <= target


def test_no_noise_is_infinite_epsilon_and_no_round_is_zero():
    assert epsilon(0.0, 3, 1e-5) == float("inf")
    assert epsilon(1.0, 0, 1e-5) == 0.0


def test_bad_targets_are_refused_with_what_to_change():
    with pytest.raises(ConfigError, match="--dp-epsilon must be positive"):
        calibrate_noise(0.0, 1e-5, 10)
    with pytest.raises(ValueError, match="delta must be in"):
        epsilon(1.0, 10, 1.5)
    with pytest.raises(ValueError, match="sampling_rate"):
        epsilon(1.0, 10, 1e-5, 0.0)
