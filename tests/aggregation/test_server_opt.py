import numpy as np
import pytest

from fedshield.aggregation import (
    FedAdagrad,
    FedAdam,
    FedYogi,
    ServerOptimizer,
    build,
    weighted_mean,
)
from fedshield.errors import ConfigError, ProtocolAbort


def test_plain_update_with_unit_rate_is_fedavg():
    x = np.array([1.0, 2.0], np.float32)
    d = np.array([0.5, -1.0], np.float32)
    np.testing.assert_array_equal(ServerOptimizer().step(x, d), x + d)


@pytest.mark.parametrize("cls", [FedAdagrad, FedAdam, FedYogi])
def test_adaptive_rules_follow_reddi_et_al(cls):
    rng = np.random.default_rng(0)
    x = rng.normal(size=5).astype(np.float32)
    deltas = [rng.normal(size=5) for _ in range(3)]
    opt = cls(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    m, v = np.zeros(5), np.full(5, 1e-6)
    ref = x.astype(np.float64)
    for d in deltas:
        x = opt.step(x, d.astype(np.float32))
        d = d.astype(np.float32).astype(np.float64)
        m = 0.9 * m + 0.1 * d
        if cls is FedAdagrad:
            v = v + d * d
        elif cls is FedAdam:
            v = 0.99 * v + 0.01 * d * d
        else:
            v = v - 0.01 * d * d * np.sign(v - d * d)
        ref = (ref + 0.1 * m / (np.sqrt(v) + 1e-3)).astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(x, ref, rtol=1e-6)


def test_build_and_validation():
    assert isinstance(build("adam"), FedAdam)
    assert build("adam").lr == 1e-2 and build("none").lr == 1.0
    with pytest.raises(ConfigError, match="choose one of"):
        build("sgdx")
    with pytest.raises(ValueError):
        ServerOptimizer(lr=0)
    with pytest.raises(ValueError):
        ServerOptimizer().step(np.zeros(2, np.float32), np.zeros(3, np.float32))


def test_weighted_mean_renormalises_and_refuses_empty():
    np.testing.assert_allclose(weighted_mean(np.array([3.0, 6.0]), 3.0), [1.0, 2.0])
    with pytest.raises(ProtocolAbort):
        weighted_mean(np.zeros(2), 0.0)
