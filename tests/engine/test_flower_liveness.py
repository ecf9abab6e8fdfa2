"""Liveness over a real Flower deployment on loopback: a site that dies or hangs during
training is a dropout once the train deadline (from the phase's start) has passed, the round
completes with the others, and a hung site that wakes up later corrupts nothing."""

import os
import signal
import time

import pytest
from in_process import in_process  # the same run in process, in a fresh interpreter

from fedshield.crypto.identity import Identity
from fedshield.engine.experiment import (
    RunConfig,
    build_server_round,
    enrol_sites,
    with_data_facts,
)
from fedshield.engine.flower.deadlines import Deadlines
from fedshield.engine.flower.deploy import live_members, run_on_flower
from fedshield.engine.flower.site import SiteProcess
from fedshield.errors import WrongRound
from fedshield.protocols.roster import Roster

pytestmark = pytest.mark.flower

# Short deadlines: the healthy sites train tiny synthetic data in about a second, and Flower's
# SuperNodes poll every 3 s.
DEADLINES = Deadlines(train=15, stage=15, evaluate=10, shutdown=3)
# A round with a silent site waits for it twice: its training, then its evaluation.
SILENT_ROUND_S = DEADLINES.train + DEADLINES.evaluate
# the rest of a round with a silent site: the others' work, SecAgg+'s stages for the update
# and for the evaluation counts (each a Flower round trip of ~4-5 s, more on a loaded host)
ROUND_WORK_S = 120
MARGIN_S = 5.0  # the last pull's latency, and the test's 0.1 s reading of the events
JITTER_S = 0.5  # the test reads each event up to 0.1 s (plus its own work) after it happens


def _phase_clock(seen: dict, event: dict) -> None:
    """When each phase of each round opened (as the test reads the ServerApp's events)."""
    if "stage" in event:
        seen.setdefault("opened", {})[(event["round"], event["stage"])] = time.monotonic()


def _train_phase_s(seen: dict, round: int) -> float:
    """Seconds from the round's train requests to its first protocol stage."""
    opened = seen["opened"]
    return opened[(round, "advertise_keys")] - opened[(round, "train")]


def _config(rounds: int) -> RunConfig:
    """SecAgg+ over 3 sites, tolerating one dropout (the server colludes with none)."""
    return RunConfig(protect="secagg", sites=3, rounds=rounds, local_epochs=1, colluders=0)


def _without_site_2(config: RunConfig) -> dict:
    """Round 1 in process with site 2 gone before the protocol's first stage."""
    schedule = {"advertise_keys": [2]}
    return in_process(RunConfig(**{**config.as_dict(), "dropout_schedule": schedule}))[0]


def test_a_site_process_that_wakes_up_refuses_its_stale_requests(tmp_path):
    """What a hung site finds queued when it wakes (a late duplicate of a train request, an
    evaluation of a round that is over) is refused by its round checks; a fresh round's
    training goes on."""
    config = with_data_facts(RunConfig(protect="secagg", sites=3, rounds=2, local_epochs=1))
    roster = Roster.load(enrol_sites(config, tmp_path))
    site = SiteProcess(config, 2, roster, Identity.load(tmp_path / "site2.identity"))
    model = build_server_round(config).model
    first, second = model.broadcast(1), model.broadcast(2)
    assert site.handle("train", first)  # its seconds of training
    with pytest.raises(WrongRound, match="round 1 after 1"):
        site.handle("train", first)
    assert site.handle("train", second)
    with pytest.raises(WrongRound, match="an evaluation of round 1 after round 2"):
        site.handle("evaluate", first)
    with pytest.raises(WrongRound, match="round 1 after 2"):
        site.handle("train", first)
    assert site.round == 2 and site.session is not None


def test_a_site_killed_during_training_is_dropped_at_the_train_deadline(tmp_path):
    config = _config(rounds=1)
    seen = {}

    def kill_site_2(event, deployment):
        seen["pids"] = deployment.pids()
        _phase_clock(seen, event)
        if event.get("stage") == "train":  # the train requests are out
            time.sleep(0.5)
            deployment.kill_site(2)
            seen["killed"] = time.monotonic()

    start = time.monotonic()
    (row,) = run_on_flower(config, tmp_path / "out", on_event=kill_site_2, deadlines=DEADLINES)
    assert seen.get("killed") and time.monotonic() - start < 300  # not a 600 s stall
    assert row["aborted"] is None
    assert row["clients"] == [0, 1] and row["dropped"] == [2]
    # the train phase waited for site 2 until its deadline, not longer; the whole round
    # waited out its train and evaluate deadlines, plus the others' work
    assert DEADLINES.train - JITTER_S <= _train_phase_s(seen, 1) < DEADLINES.train + MARGIN_S
    assert SILENT_ROUND_S <= row["wall_s"] < SILENT_ROUND_S + ROUND_WORK_S
    # the survivors' aggregate is the in-process engine's with site 2 gone, bit for bit
    mine = _without_site_2(config)
    assert mine["clients"] == [0, 1]
    assert row["protocol"]["aggregate_sha256"] == mine["protocol"]["aggregate_sha256"]
    assert row["model_sha256"] == mine["model_sha256"]
    assert live_members(seen["pids"]) == []  # every process of the deployment is gone


def test_a_hung_site_is_dropped_and_its_wakeup_corrupts_nothing(tmp_path):
    """SIGSTOP site 2's process during round 1's training (its SuperNode stays up: Flower
    still delivers to it, the ClientApp waits for the site until the deadline), SIGCONT it
    after round 1: its stale round-1 work is never used, and it trains in round 2."""
    config = _config(rounds=2)
    seen = {}

    def hang_site_2(event, deployment):
        _phase_clock(seen, event)
        site = deployment.processes["site2"]
        if event.get("round") == 1 and event.get("stage") == "train":
            time.sleep(0.5)
            os.killpg(site.pid, signal.SIGSTOP)
            seen["stopped"] = True
        if event.get("round") == 1 and event.get("event") == "done":
            os.killpg(site.pid, signal.SIGCONT)
            seen["resumed"] = True

    first, second = run_on_flower(
        config, tmp_path / "out", on_event=hang_site_2, deadlines=DEADLINES
    )
    assert seen.get("stopped") and seen.get("resumed")
    assert first["aborted"] is None and first["clients"] == [0, 1] and first["dropped"] == [2]
    assert DEADLINES.train - JITTER_S <= _train_phase_s(seen, 1) < DEADLINES.train + MARGIN_S
    assert SILENT_ROUND_S <= first["wall_s"] < SILENT_ROUND_S + ROUND_WORK_S
    mine = _without_site_2(config)
    assert first["protocol"]["aggregate_sha256"] == mine["protocol"]["aggregate_sha256"]
    # awake again, site 2 is in round 2 (the survivors' model of round 1, its fresh update)
    assert second["aborted"] is None and second["clients"] == [0, 1, 2]
    assert second["dropped"] == [] and second["protocol"]["aggregate_sha256"] is not None
    assert _train_phase_s(seen, 2) < DEADLINES.train  # nobody waited for a deadline
