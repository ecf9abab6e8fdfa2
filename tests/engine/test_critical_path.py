"""``critical_path_s``: the round's time with the sites in parallel, as a deployment sees it."""

from __future__ import annotations

import pytest

from fedshield.engine.experiment import RunConfig, build_federation
from fedshield.engine.runner import StageStats
from fedshield.engine.server_round import RoundTiming


def test_the_critical_path_is_the_slowest_training_plus_the_slowest_client_per_stage():
    stages = [
        StageStats("advertise_keys", client_s={0: 0.25, 1: 0.5, 2: 0.125}, server_s=0.0625),
        StageStats("masked_input", client_s={0: 2.0, 1: 1.0}, server_s=0.5),  # site 2 dropped
        StageStats("unmask", client_s={}, server_s=0.25),  # nobody answered: no client time
    ]
    timing = RoundTiming(start=0.0, site_train_s={0: 3.0, 1: 4.0, 2: 1.0}, aggregate_s=1.5)
    # by hand: slowest training 4.0, slowest clients 0.5 + 2.0 + 0, server (stages + apply) 1.5
    assert timing.critical_path_s(stages) == 4.0 + 0.5 + 2.0 + 0.0 + 1.5


@pytest.mark.parametrize("protect", ["plain", "secagg"])
def test_every_round_records_its_critical_path_beside_the_one_process_wall_time(protect):
    fed = build_federation(RunConfig(protect=protect, sites=3, rounds=1, local_epochs=1))
    record = fed.run_round()
    expected = (
        max(record.site_train_s.values())
        + sum(max(s.client_s.values(), default=0.0) for s in record.stages)
        + record.server_aggregate_s
    )
    assert record.critical_path_s == pytest.approx(expected, rel=1e-12)
    assert record.train_s == pytest.approx(sum(record.site_train_s.values()))
    assert 0 < record.critical_path_s < record.wall_s  # three sites trained one after another
    assert record.as_dict()["critical_path_s"] == record.critical_path_s
