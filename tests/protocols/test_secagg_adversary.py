"""SecAgg+ against deviating parties, as an attacker would drive the real sessions: a client
that forges every share it reveals, a client that sends values off the grid, and a server
that shrinks a round around one client. Each attack is shown to work where the defence is
off (or was measured to before it), and to fail now."""

import numpy as np
import pytest
from enrolment import ROSTER, signing_as
from test_secagg import _decode_levels, _expected_level_sum, _run, forging_client_0

from fedshield.engine.runner import run_protocol
from fedshield.engine.transport import InProcessTransport
from fedshield.protocols.registry import get_protocol
from fedshield.protocols.secagg import SecAggClient, SecAggServer
from fedshield.protocols.secagg.config import SecAggConfig


def test_one_forger_among_12_with_threshold_7_is_corrected_and_named():
    """The issue's attack: at n = 12, t = 7 one flipped bit in client 0's shares aborted the
    round (a subset search that always picked share 0). Reed-Solomon decoding corrects it,
    the round completes with the exact aggregate, and the forger is named."""
    config = SecAggConfig(clip=1.0, quant_bits=8, weight_bits=4, max_weight=15.0, threshold=7,
                          weighting="integer")  # fmt: skip
    server, outcome, levels, weights = _run(12, 16, config=config,
                                            transport_cls=forging_client_0(every=True))  # fmt: skip
    np.testing.assert_array_equal(
        _decode_levels(server, outcome.revealed, 16),
        _expected_level_sum(levels, weights, range(12), config),
    )
    pairs = server.describe()["inconsistent_shares"]
    assert pairs and {holder for _, holder in pairs} == {0}  # every share client 0 revealed


class _OffGrid(SecAggClient):
    """A malicious client: after encoding honestly, it puts a ring value no honest client
    could send at ``position`` (a level, or the weight's digit, far above the grid's top)."""

    position, value = 0, 900

    def _weighted_levels(self, out):
        super()._weighted_levels(out)
        out[self.position] = self.value


@pytest.mark.parametrize(("position", "value"), [(0, 900), (16, 300)])  # a level; the weight
def test_a_client_sending_values_off_the_grid_aborts_the_round_instead_of_moving_the_mean(
    position, value
):
    """The honest clients send the grid's bottom (level 0, full weight), so the malicious
    value shows in the sum without wrapping the 10-bit ring: 900 + 0 + 0 and 300 + 255 + 255
    exceed 3 x 255. (A value that keeps the sum in
    range cannot be told from an honest one: secure aggregation hides who sent what.)"""
    config = SecAggConfig(clip=0.1, quant_bits=8, max_weight=10.0)
    low = np.full(16, -0.1, dtype=np.float32)
    server = SecAggServer(roster=ROSTER, round=1, clients=range(3), dim=16, config=config)
    forger = type("Forger", (_OffGrid,), {"position": position, "value": value})
    clients = {
        c: (forger if c == 0 else SecAggClient)(
            client_id=c,
            **signing_as(c),
            round=1,
            update=low,
            weight=10.0,
            config=config,
            quant_seed=c,
        )
        for c in range(3)
    }
    outcome = run_protocol(server, InProcessTransport(clients))
    assert outcome.revealed is None and "off the grid" in outcome.aborted


def test_a_server_cannot_shrink_the_round_to_a_lone_victim():
    """The issue's "n = 1 lie": told it is alone, a client took n = 1 and t = 1 and its own
    self-mask share then unmasked it. With the round size pinned (the engine pins the
    federation's threshold), the client refuses and nothing is revealed."""
    victim_update = np.linspace(-0.1, 0.1, 16, dtype=np.float32)
    for pinned, revealed in ((1, True), (3, False)):  # unpinned: the attack works
        config = SecAggConfig(clip=0.1, quant_bits=8, max_weight=10.0, min_clients=pinned)
        server = SecAggServer(
            roster=ROSTER, round=1, clients=[2], dim=16, config=config
        )  # "you are alone"
        victim = SecAggClient(client_id=2, **signing_as(2), round=1, update=victim_update,
                              weight=10.0,
                              config=config)  # fmt: skip
        outcome = run_protocol(server, InProcessTransport({2: victim}))
        assert (outcome.revealed is not None) == revealed
        if revealed:
            np.testing.assert_allclose(outcome.revealed.weighted_sum / 255, victim_update,
                                       atol=0.001)  # fmt: skip
        else:
            assert "pinned minimum" in outcome.stages[0].rejected[2]


def test_the_engine_pins_the_round_size_to_the_federations_threshold():
    spec = get_protocol("secagg", max_weight=10.0, sites=5)
    assert spec.config.min_clients == spec.config.threshold_for(5) == 3


class _Amplifier(SecAggClient):
    """Claims weight 0 (but counts as a site) and sends the grid's top level everywhere: under
    fraction weighting its levels are divided by the others' weight only."""

    def _weighted_levels(self, out):
        super()._weighted_levels(out)
        dim, top_level = self.update.size, (1 << self.config.quant_bits) - 1
        out[:dim] = top_level
        out[dim : dim + self.config.weight_digits] = 0
        out[dim + self.config.weight_digits] = 1


@pytest.mark.parametrize("honest_weight", [10.0, 1.0])
def test_a_weight_zero_amplifier_cannot_push_the_mean_outside_the_range(honest_weight):
    """The attacker helper's finding: the level sum stayed under count x top, so the check
    passed and the mean reached 0.15-0.59 on a range of 0.1. Sites now clip before they
    weight, so each site's levels lie within its fraction of the grid's middle, and the
    server checks the sum against that: the round aborts."""
    config = SecAggConfig(clip=0.1, quant_bits=8, max_weight=10.0)
    honest = np.full(16, 0.1, np.float32)
    server = SecAggServer(roster=ROSTER, round=1, clients=range(3), dim=16, config=config)
    clients = {
        c: (_Amplifier if c == 0 else SecAggClient)(
            client_id=c, **signing_as(c), round=1, update=honest, weight=honest_weight,
                config=config,
            quant_seed=c,
        )
        for c in range(3)
    }  # fmt: skip
    outcome = run_protocol(server, InProcessTransport(clients))
    assert outcome.revealed is None and "off the grid" in outcome.aborted


def test_honest_sites_far_outside_the_range_decode_inside_it():
    config = SecAggConfig(clip=0.1, quant_bits=8, max_weight=10.0)
    server = SecAggServer(roster=ROSTER, round=1, clients=range(3), dim=16, config=config)
    clients = {
        c: SecAggClient(client_id=c, **signing_as(c), round=1, update=np.full(16, 1.0, np.float32),
                        weight=1.0 + c, config=config, quant_seed=c)
        for c in range(3)
    }  # fmt: skip
    revealed = run_protocol(server, InProcessTransport(clients)).revealed
    mean = revealed.weighted_sum / revealed.total_weight
    rounding = 3 * (0.2 / 255) * 255 / revealed.total_weight  # n steps of the shared grid
    assert np.all(np.abs(mean) <= 0.1 + rounding)  # was 0.98: small sites were clipped less
