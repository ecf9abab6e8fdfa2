"""A site under DP releases no more rounds than its epsilon was calibrated for (found by an
adversarial review; the test failed before the site counted its releases): what a deviating
server can get a deployment's site to release."""

from __future__ import annotations

from fedshield.crypto.identity import Identity
from fedshield.engine.experiment import RunConfig, build_server_round, enrol_sites, with_data_facts
from fedshield.engine.flower.site import SiteProcess
from fedshield.errors import FedshieldError
from fedshield.protocols.roster import Roster


def test_a_site_refuses_to_train_past_the_rounds_its_epsilon_was_calibrated_for(tmp_path):
    """``--dp-epsilon E`` with ``--rounds R`` calibrates the noise so that ``R`` rounds spend
    ``E``. Distributed DP is meant to hold against the server, yet only the server counts
    rounds (its record's epsilon): a site process trains and sends a fresh noisy update for
    every round number above its last, with no cap. A server asking for ``10 R`` rounds gets
    ``10 R`` releases of each site's data (epsilon far above ``E``); the site should refuse a
    round past its planned ``R`` (or count its own releases)."""
    config = with_data_facts(RunConfig(protect="secagg", sites=3, rounds=1,
                                       dp_mode="distributed", dp_epsilon=1.0))  # fmt: skip
    roster = Roster.load(enrol_sites(config, tmp_path))
    site = SiteProcess(config, 0, roster, Identity.load(tmp_path / "site0.identity"))
    server = build_server_round(config)
    site.handle("train", server.model.broadcast(1))  # the one planned round
    trained_past_plan = []
    for round in (2, 3, 50):
        try:
            site.handle("train", server.model.broadcast(round))
        except (FedshieldError, ValueError, RuntimeError):
            continue
        trained_past_plan.append(round)
    assert not trained_past_plan, (
        f"planned for {config.rounds} round (epsilon {config.dp_epsilon}), the site trained "
        f"and opened a noisy session for rounds {trained_past_plan} too"
    )
