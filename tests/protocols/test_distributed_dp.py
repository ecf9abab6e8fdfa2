"""Distributed DP inside the real sessions (secagg's ring, he's BFV fields), checked as an auditor
would: the noise in the unmasked or decrypted sum has at least the target variance with every
site and with only the threshold number of survivors (an empirical test over many rounds), the
sum never wraps at the documented maximum, a sum with fewer sites than the noise is sized for
is refused, and the noise never comes from the run's seed."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant
from enrolment import ROSTER, signing_as
from scipy import stats

from fedshield.crypto import ddg, noise
from fedshield.crypto.ddg import DiscreteGaussianEncoding
from fedshield.engine.dropout import DropoutPolicy
from fedshield.engine.runner import run_protocol
from fedshield.engine.transport import InProcessTransport
from fedshield.errors import ConfigError
from fedshield.privacy import epsilon
from fedshield.protocols.he import HEClient, HEServer
from fedshield.protocols.he.keys import HEKeyring
from fedshield.protocols.he.params import HEConfig, plan_for
from fedshield.protocols.secagg import SecAggClient, SecAggServer
from fedshield.protocols.secagg.config import SecAggConfig

D, CLIP, Z = 1500, 1.0, 1.0


def _encoding(z=Z, min_sites=3, d=D):
    return DiscreteGaussianEncoding.for_target(
        clip=CLIP, dim=d, noise_multiplier=z, min_sites=min_sites
    )


def _updates(n, d, seed):
    rng = np.random.default_rng(seed)
    return {c: rng.normal(0, 0.05, d).astype(np.float32) for c in range(n)}  # some past C


def _clipped_sum(encoding, updates, ids):
    return sum(encoding.clipped(updates[c]) for c in ids)


def _secagg_round(encoding, updates, *, schedule=None, min_clients=3, seed=0):
    config = SecAggConfig(clip=None, weight_bits=0, max_weight=1.0, noise=encoding,
                          min_clients=min_clients, colluders=0)  # fmt: skip
    n, d = len(updates), encoding.dim
    server = SecAggServer(roster=ROSTER, round=1, clients=range(n), dim=d, config=config)
    clients = {
        c: SecAggClient(client_id=c, **signing_as(c), round=1, update=updates[c], weight=1.0,
                        config=config, quant_seed=seed)  # the same seed everywhere: unused
        for c in range(n)
    }  # fmt: skip
    outcome = run_protocol(server, InProcessTransport(clients),
                           dropout=DropoutPolicy(schedule=schedule))  # fmt: skip
    return server, outcome


def _he_round(plan, keyring, updates, *, schedule=None):
    server = HEServer(round=1, clients=list(updates), dim=plan.dim, plan=plan)
    clients = {
        c: HEClient(client_id=c, round=1, update=u, weight=1.0, keyring=keyring, quant_seed=0)
        for c, u in updates.items()
    }
    outcome = run_protocol(server, InProcessTransport(clients),
                           dropout=DropoutPolicy(schedule=schedule or {}))  # fmt: skip
    return clients, outcome


def _check_noise_variance(noise_values: np.ndarray, encoding, survivors: int) -> None:
    """The noise (integer units) is centred, has ``survivors * sigma_site^2`` variance, and
    so at least the target ``(z B)^2`` whenever ``survivors >= t``."""
    target = (encoding.noise_multiplier * encoding.bound) ** 2
    expected = survivors * encoding.site_sigma**2
    assert expected >= target * (1 - 1e-12)
    n = noise_values.size
    assert abs(noise_values.mean()) < 5 * (expected / n) ** 0.5
    # chi-square interval for the sample variance at 1e-6 both ways (rounding adds < 1/4 each)
    low, high = stats.chi2.ppf([1e-6, 1 - 1e-6], n - 1) / (n - 1)
    assert low * expected <= noise_values.var(ddof=1) <= high * (expected + survivors / 4)
    assert noise_values.var(ddof=1) >= target * low


@pytest.mark.parametrize(
    ("schedule", "survivors"),
    [(None, 5), ({"advertise_keys": [1], "masked_input": [3]}, 3)],
    ids=["every site", "threshold survivors"],
)
def test_secagg_sum_carries_the_target_noise(schedule, survivors):
    encoding = _encoding()
    samples = []
    for r in range(6):
        updates = _updates(5, D, seed=r)
        _server, outcome = _secagg_round(encoding, updates, schedule=schedule)
        assert outcome.aborted is None, outcome.aborted
        ids = outcome.revealed.contributors
        assert len(ids) == survivors and outcome.revealed.total_weight == survivors
        exact = _clipped_sum(encoding, updates, ids)
        samples.append((outcome.revealed.weighted_sum - exact) * encoding.scale)
    _check_noise_variance(np.concatenate(samples), encoding, survivors)


@pytest.mark.parametrize(("schedule", "survivors"), [(None, 4), ({"input": [2]}, 3)],
                         ids=["every site", "threshold survivors"])  # fmt: skip
def test_he_decrypted_sum_carries_the_target_noise(schedule, survivors):
    encoding = _encoding()
    plan = plan_for(HEConfig(clip=None, weight_bits=0, max_weight=1.0, noise=encoding),
                    n_clients=4, dim=D)  # fmt: skip
    assert plan.value_bits == encoding.level_bits + 2
    keyring = HEKeyring.generate(plan)
    samples = []
    for r in range(6):
        updates = _updates(4, D, seed=10 + r)
        clients, outcome = _he_round(plan, keyring, updates, schedule=schedule)
        assert outcome.aborted is None, outcome.aborted
        ids = outcome.revealed.contributors
        assert len(ids) == survivors
        noisy, total = clients[ids[0]].aggregate
        assert total == survivors
        assert all(np.array_equal(clients[c].aggregate[0], noisy) for c in ids)
        samples.append((noisy - _clipped_sum(encoding, updates, ids)) * encoding.scale)
    _check_noise_variance(np.concatenate(samples), encoding, survivors)


def _pin_noise_at_its_tail(monkeypatch, sign):
    """Every site's noise at its largest allowed size (``sign``: +1 or -1 everywhere)."""
    monkeypatch.setattr(
        DiscreteGaussianEncoding, "noise",
        lambda self, rng: np.full(self.dim, sign * self.tail, np.int64),
    )  # fmt: skip


@pytest.mark.parametrize("sign", [1, -1])
def test_no_wrap_around_at_the_documented_maximum(monkeypatch, sign):
    """Every site puts its whole L2 norm into one value and its noise at the tail on every
    value: the sum is the extreme one the ring must hold, and decodes exactly."""
    _pin_noise_at_its_tail(monkeypatch, sign)
    encoding = _encoding(z=4.0, d=64)
    n = 5
    top = math.floor(encoding.inner_clip * encoding.scale)  # the largest whole value sent
    updates = {c: np.zeros(64, np.float32) for c in range(n)}
    for c in range(n):
        updates[c][0] = sign * top / encoding.scale
    server, outcome = _secagg_round(encoding, updates)
    assert outcome.aborted is None and server.bits == encoding.sum_bits(n)
    expected = np.full(64, n * sign * encoding.tail, dtype=np.int64)
    expected[0] += n * sign * top
    top_level = encoding.offset + top + encoding.tail
    assert (n * top_level).bit_length() <= server.bits  # the extreme fits, just
    np.testing.assert_array_equal(outcome.revealed.weighted_sum * encoding.scale, expected)


def test_he_refuses_a_sum_of_fewer_sites_than_the_noise_is_sized_for():
    plan = plan_for(HEConfig(clip=None, weight_bits=0, max_weight=1.0, noise=_encoding()),
                    n_clients=4, dim=D)  # fmt: skip
    _clients, outcome = _he_round(plan, HEKeyring.generate(plan), _updates(4, D, 0),
                                  schedule={"input": [1, 2]})  # fmt: skip
    assert outcome.revealed is None and "no site accepted" in outcome.aborted
    reasons = outcome.stages[-1].rejected
    assert sorted(reasons) == [0, 3] and all("fewer than the 3" in r for r in reasons.values())


def test_the_noise_comes_from_the_os_csprng_not_the_seed(monkeypatch):
    encoding, update = _encoding(), _updates(1, D, 0)[0]
    assert not np.array_equal(encoding.encode(update), encoding.encode(update))
    monkeypatch.setattr(noise.secrets, "randbits", lambda k: 99)
    assert np.array_equal(encoding.encode(update), encoding.encode(update))


def test_rounding_keeps_every_sent_vector_within_the_bound():
    encoding = _encoding(z=0.0)
    rng = np.random.default_rng(3)
    for scale in (0.01, 1.0, 100.0):
        update = rng.normal(0, scale, D)
        rounded = encoding.encode(update) - encoding.offset
        assert np.linalg.norm(rounded) / encoding.scale <= CLIP  # what leaves: within C
        # the rounding is within one integer unit of the clipped, scaled update
        assert np.abs(rounded - encoding.clipped(update) * encoding.scale).max() < 1
    assert encoding.bound == CLIP * encoding.scale and encoding.inner_clip > 0.999 * CLIP


def test_the_fallback_rounding_also_fits(monkeypatch):
    monkeypatch.setattr(ddg, "ROUNDING_TRIES", 0)
    encoding = _encoding(z=0.0)
    update = np.full(D, 1.0)
    rounded = encoding.encode(update) - encoding.offset
    assert np.linalg.norm(rounded) / encoding.scale <= CLIP


def test_bad_encodings_are_refused():
    with pytest.raises(ValueError, match="site_sigma"):
        DiscreteGaussianEncoding(clip=1.0, dim=4, scale=4096.0, site_sigma=2.0, min_sites=1)
    with pytest.raises(ConfigError, match="weight_bits=0"):
        SecAggConfig(clip=None, noise=_encoding())
    with pytest.raises(ConfigError, match="BFV"):
        HEConfig(scheme="ckks", weight_bits=0, noise=_encoding())
    with pytest.raises(ValueError, match="for 1500 values"):
        _encoding().encode(np.zeros(3))


def test_the_sum_of_discrete_gaussians_adds_no_slack_to_epsilon():
    """Kairouz et al.'s Theorem 1 slack for the sum of n discrete Gaussians, at the smallest
    per-site noise the encoding allows, 1024 sites and 10^8 values: as the zCDP term it is,
    composed by the library, it leaves epsilon where the Gaussian mechanism puts it."""
    sigma, n, d = ddg.MIN_SITE_SIGMA, 1024, 10**8
    tau = 10 * sum(math.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, n))
    assert tau * d / 4 < 1e-250
    accountant = RdpAccountant()
    accountant.compose(dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(1.0), dp_accounting.ZCDpEvent(tau * d / 4)]
    ))  # fmt: skip
    assert accountant.get_epsilon(1e-5) == epsilon(1.0, 1, 1e-5)
    for z in (1e-6, 1e-3, 0.5, 20.0):  # every noise level keeps sigma_site >= 8
        encoding = _encoding(z=z, min_sites=50)
        assert encoding.site_sigma >= ddg.MIN_SITE_SIGMA
        assert encoding.noise_multiplier == pytest.approx(z, rel=1e-12)
