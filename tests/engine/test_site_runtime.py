"""The site runtime and the server round apart: a deployment's site process builds its own
site's data and nothing else; the server builds no site's data at all."""

from __future__ import annotations

import numpy as np
import pytest

from fedshield import wire
from fedshield.crypto.identity import Identity
from fedshield.data.sites import SiteData
from fedshield.engine.experiment import (
    RunConfig,
    build_federation,
    build_server_round,
    build_site_runtime,
    enrol_sites,
    with_data_facts,
)
from fedshield.engine.flower.site import SiteProcess
from fedshield.engine.transport import InProcessTransport
from fedshield.errors import ConfigError, WrongRound
from fedshield.protocols.registry import MODEL_BROADCAST
from fedshield.protocols.roster import Roster


def _site_processes(config, sites, directory):
    """The roster and site processes as a deployment enrols and starts them."""
    roster = Roster.load(enrol_sites(config, directory))
    return roster, {
        i: SiteProcess(config, i, roster, Identity.load(directory / f"site{i}.identity"))
        for i in sites
    }


def _only_site(monkeypatch, allowed: set[str]) -> list[str]:
    """Make every other site's data unavailable: building it fails the test."""
    built: list[str] = []
    check = SiteData.__post_init__

    def guarded(self) -> None:
        if self.name not in allowed:
            raise AssertionError(f"built {self.name}'s data, which this process must not hold")
        built.append(self.name)
        check(self)

    monkeypatch.setattr(SiteData, "__post_init__", guarded)
    return built


@pytest.mark.parametrize("dataset", ["synthetic", "breastmnist"])
def test_a_site_process_builds_only_its_own_data_and_trains_a_round(monkeypatch, dataset, tmp_path):
    try:
        config = with_data_facts(RunConfig(dataset=dataset, protect="secagg", sites=3, rounds=1))
    except ConfigError:  # pragma: no cover - the data file is not here
        pytest.skip(f"{dataset} not available")
    built = _only_site(monkeypatch, {"site1"})
    _, processes = _site_processes(config, [1], tmp_path)
    process = processes[1]
    assert built == ["site1"]
    server = build_server_round(config)  # builds no data at all: site1 is the only one allowed
    assert built == ["site1"]
    seconds = process.handle("train", server.broadcast())
    assert np.frombuffer(seconds)[0] > 0 and process.session is not None
    assert built == ["site1"]


def test_site_runtimes_train_the_same_update_as_the_in_process_federation(tiny_sites):
    config = with_data_facts(RunConfig(protect="plain", sites=2, rounds=1, local_epochs=1))
    fed = build_federation(config)
    alone = build_site_runtime(config, 1)
    broadcast = fed.server.broadcast()
    inside = fed.runtimes[1].train(broadcast, 1)
    outside = alone.train(broadcast, 1)
    np.testing.assert_array_equal(inside.update, outside.update)


def test_a_site_process_needs_the_public_facts_in_its_config():
    with pytest.raises(ConfigError, match="max_weight"):
        build_site_runtime(RunConfig(protect="secagg", sites=2), 0)
    with pytest.raises(ConfigError, match="in_channels"):
        build_server_round(RunConfig(protect="secagg", sites=2, max_weight=10.0))


@pytest.mark.parametrize("protect", ["plain", "secagg"])
def test_a_server_round_and_site_processes_agree_on_the_payload_format(protect, tmp_path):
    sparsify = "topk:0.05" if protect == "plain" else "randk:0.1"
    config = with_data_facts(RunConfig(protect=protect, quant_bits=8, sparsify=sparsify,
                                       sites=2, rounds=1, local_epochs=1))  # fmt: skip
    server = build_server_round(config)
    roster, processes = _site_processes(config, [0, 1], tmp_path)
    server.use_protocol(server.protocol.with_roster(roster))
    broadcast = server.broadcast()
    sessions = {i: p.runtime.train(broadcast, 1) for i, p in processes.items()}
    outcome, _ = server.drive(InProcessTransport(sessions), [0, 1])
    assert outcome.aborted is None
    assert list(outcome.revealed.contributors) == [0, 1]


def test_an_he_site_that_missed_an_aggregate_sits_out_instead_of_training_on_stale_ranges(
    tmp_path,
):
    """Under ``he`` each site holds the model and its ranges; one that missed an aggregate
    would encode its update on old ranges and corrupt the others' sum, so it refuses."""
    config = with_data_facts(RunConfig(protect="he", sites=2, rounds=2, local_epochs=1))
    process = _site_processes(config, [1], tmp_path)[1][1]
    header = wire.Header(MODEL_BROADCAST, 0, 2, wire.SERVER_ID)
    stale = wire.serialize(header, [np.array([1], dtype="<u4")])  # round 1 was aggregated
    with pytest.raises(WrongRound, match="missed an aggregate"):
        process.handle("train", stale)


def test_a_site_whose_training_diverges_sits_the_round_out_and_the_others_complete_it():
    """A NaN would land on a quantization level and skew the secure sum without a trace; the
    site refuses to send it, its local state and residual stay as they were, and the round
    completes with the other sites."""
    fed = build_federation(
        RunConfig(sites=3, rounds=1, local_epochs=1, sparsify="randk:0.5", error_feedback=True)
    )
    sick = fed.runtimes[1]
    images, _ = sick.site.train.dataset.tensors
    images[0, 0, 0, 0] = float("nan")  # one pixel poisons the forward pass
    record = fed.run_round()
    assert record.dropped == [1] and record.clients == [0, 2]
    assert np.isfinite(fed.global_vector).all()
    assert sick.compressor.feedback is None or np.isfinite(sick.compressor.feedback.residual).all()
