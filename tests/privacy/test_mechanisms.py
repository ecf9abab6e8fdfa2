"""DP-FedAvg's steps: clipping bounds every update, the noise has the planned spread, and it
comes from the OS CSPRNG, never from the run's seed."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedshield.errors import ConfigError
from fedshield.privacy import DPConfig, SiteLevelDP, clip_l2, mechanisms


def _config(mode="central", **overrides):
    options = dict(mode=mode, clip=0.5, noise_multiplier=1.2, delta=1e-5, rounds=10, sites=4)
    return DPConfig(**{**options, **overrides})


@settings(max_examples=60, deadline=None)
@given(
    update=arrays(np.float32, st.integers(1, 300),
                  elements=st.floats(-1e4, 1e4, width=32, allow_nan=False)),
    clip=st.floats(1e-3, 1e3),
)  # fmt: skip
def test_a_clipped_update_never_exceeds_the_bound(update, clip):
    clipped = clip_l2(update, clip)
    assert np.linalg.norm(clipped.astype(np.float64)) <= clip
    if np.linalg.norm(update.astype(np.float64)) <= clip:
        np.testing.assert_array_equal(clipped, update)


def test_local_mode_adds_the_planned_noise_at_the_site_and_none_at_the_server():
    dp = SiteLevelDP(_config("local"))
    sent = dp.at_site(np.zeros(200_000, np.float32))
    assert np.std(sent) == pytest.approx(0.6, rel=0.01)  # sigma * C
    total, denominator = dp.at_server(np.ones(5))
    np.testing.assert_array_equal(total, np.ones(5))
    assert denominator == 4.0


def test_central_mode_clips_at_the_site_and_adds_the_noise_at_the_server():
    dp = SiteLevelDP(_config("central"))
    sent = dp.at_site(np.full(100, 10.0, np.float32))
    assert np.linalg.norm(sent) <= 0.5 and np.allclose(sent, sent[0])  # scaled, no noise
    total, denominator = dp.at_server(np.zeros(200_000))
    assert np.std(total) == pytest.approx(0.6, rel=0.01) and denominator == 4.0


def test_the_noise_comes_from_the_os_csprng_not_from_any_seed(monkeypatch):
    """Two sessions under the same global seeds draw different noise; pinning the CSPRNG
    (and only that) makes the draws repeat: it is their one source."""
    np.random.seed(0)
    first = SiteLevelDP(_config("local")).at_site(np.zeros(50, np.float32))
    np.random.seed(0)
    second = SiteLevelDP(_config("local")).at_site(np.zeros(50, np.float32))
    assert not np.array_equal(first, second)
    monkeypatch.setattr(mechanisms.secrets, "randbits", lambda bits: 12345)
    pinned = [SiteLevelDP(_config("local")).at_site(np.zeros(50, np.float32)) for _ in range(2)]
    np.testing.assert_array_equal(*pinned)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"mode": "global"}, "--dp-mode"), ({"clip": 0.0}, "--dp-clip"),
     ({"noise_multiplier": -1.0}, "--dp-noise"), ({"delta": 1.0}, "--dp-delta")],
)  # fmt: skip
def test_bad_parameters_are_refused_naming_the_option(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(**overrides)


def test_a_calibrated_config_spends_its_budget_by_the_planned_round():
    config = DPConfig.calibrated(mode="central", clip=1.0, target_epsilon=4.0, delta=1e-5,
                                 rounds=20, sites=4)  # fmt: skip
    assert 0.99 * 4.0 <= config.epsilon_after(20) <= 4.0
    assert config.describe(5)["epsilon"] < config.describe(20)["epsilon"]
