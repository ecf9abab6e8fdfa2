"""Distributed DP (``--dp-mode distributed``) as the engine wires it, checked against the
threat model: the noise floor ``t`` the encoding is sized for must be what every site pins
before it unmasks, and must count only sites the adversary does not control. The session-level
attacks that exploit each gap are in ``tests/protocols/test_distributed_dp_attacks.py``."""

from __future__ import annotations

import json

import pytest

from fedshield.engine.dp import noise_floor, with_distributed_noise
from fedshield.engine.experiment import RunConfig, build_server_round, enrol_sites, with_data_facts
from fedshield.engine.runner import enrol
from fedshield.errors import ConfigError
from fedshield.privacy import DPConfig
from fedshield.protocols.registry import get_protocol


def _privacy(sites: int) -> DPConfig:
    return DPConfig(mode="distributed", clip=1.0, noise_multiplier=1.0, delta=1e-5, rounds=1,
                    sites=sites)  # fmt: skip


@pytest.mark.parametrize(
    ("sites", "options"),
    [(10, {"threshold": 2}), (10, {"neighbours": 4}), (50, {}), (100, {})],
    ids=["threshold-2-of-10", "neighbours-4-of-10", "defaults-50", "defaults-100"],
)
def test_the_federation_roster_pins_the_noise_floor(sites, options):
    """Federation (and ``enrol``) enrol the roster from the spec with the noise bound: the
    roster's ``min_sites``, which every client pins as the fewest sites a round may list,
    must reach the encoding's ``min_sites``. It is the Shamir threshold at ``n`` instead,
    below ``n // 2 + 1`` whenever the graph is sparse (n > 32 by default) or the user sets
    ``--threshold``/``--neighbours``."""
    spec = get_protocol("secagg", max_weight=1.0, clip=1.0, sites=sites, **options)
    spec = with_distributed_noise(spec, _privacy(sites), dim=64, sites=sites)
    roster, _ = enrol(spec, list(range(sites)))
    assert roster.min_sites >= spec.config.noise.min_sites, (
        f"clients pin rounds of {roster.min_sites} sites; the noise is sized for "
        f"{spec.config.noise.min_sites}"
    )


def test_a_deployment_roster_pins_the_noise_floor(tmp_path):
    """``fedshield`` deployments (Flower) enrol with ``enrol_sites``, whose spec carries no
    encoding at all: the roster pins neither the noise floor nor the encoding."""
    config = with_data_facts(RunConfig(sites=10, threshold=2, dp_mode="distributed",
                                       dp_noise=1.0, protect="secagg", rounds=1))  # fmt: skip
    roster = json.loads(enrol_sites(config, tmp_path).read_text())
    encoding = build_server_round(config).protocol.config.noise
    assert roster["min_sites"] >= encoding.min_sites, (roster["min_sites"], encoding.min_sites)


@pytest.mark.parametrize("sites", [4, 5, 10, 20])
@pytest.mark.parametrize("colluders", [None, 0, 2])
def test_the_noise_floor_counts_only_sites_outside_the_colluders(sites, colluders):
    """The noise is sized for the ``t - c`` sites of the smallest sum that are not among the
    ``c`` colluders (``--dp-colluders``, default 1: each site knows its own noise and reads
    the model); their noise alone reaches the target."""
    spec = get_protocol("secagg", max_weight=1.0, clip=1.0, sites=sites)
    privacy = DPConfig(mode="distributed", clip=1.0, noise_multiplier=1.0, delta=1e-5,
                       rounds=1, sites=sites, colluders=colluders)  # fmt: skip
    encoding = with_distributed_noise(spec, privacy, dim=64, sites=sites).config.noise
    c = 1 if colluders is None else colluders
    assert encoding.min_sites == noise_floor(spec, sites) and encoding.colluders == c
    honest_variance = (encoding.min_sites - c) * encoding.site_sigma**2
    assert honest_variance == pytest.approx(encoding.bound**2)  # z = 1: the target


def test_more_colluders_than_the_smallest_sum_are_refused():
    spec = get_protocol("secagg", max_weight=1.0, clip=1.0, sites=4)
    privacy = DPConfig(mode="distributed", clip=1.0, noise_multiplier=1.0, delta=1e-5,
                       rounds=1, sites=4, colluders=3)  # fmt: skip
    with pytest.raises(ConfigError, match="--dp-colluders 3: a round may hold as few as 3"):
        with_distributed_noise(spec, privacy, dim=64, sites=4)
