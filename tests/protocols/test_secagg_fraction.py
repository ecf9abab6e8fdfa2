"""SecAgg+ with fraction weighting (the default): each client quantizes its update times its
weight fraction, so the ring needs no weight bits. Checked as an auditor would: the unmasked
sum against the plain sum of what the clients put in, the error bound of the mean, dropouts,
what the server learns, and the ring size."""

from __future__ import annotations

import numpy as np
import pytest
from enrolment import ROSTER, signing_as

from fedshield.crypto import ring
from fedshield.engine.dropout import DropoutPolicy
from fedshield.engine.runner import run_protocol
from fedshield.engine.transport import InProcessTransport
from fedshield.protocols.secagg import SecAggClient, SecAggServer
from fedshield.protocols.secagg.config import SecAggConfig

CONFIG = SecAggConfig(clip=0.5, quant_bits=8, weight_bits=8, max_weight=300.0)


def _round(n, d=301, *, config=CONFIG, schedule=None, seed=0):
    rng = np.random.default_rng(seed)
    updates = {c: rng.uniform(-0.6, 0.6, size=d).astype(np.float32) for c in range(n)}
    weights = {c: float(rng.integers(10, 300)) for c in range(n)}
    server = SecAggServer(roster=ROSTER, round=1, clients=range(n), dim=d, config=config)
    clients = {
        c: SecAggClient(client_id=c, **signing_as(c), round=1, update=updates[c],
                        weight=weights[c], config=config,
                        quant_seed=seed * 100 + c)
        for c in range(n)
    }  # fmt: skip
    outcome = run_protocol(
        server, InProcessTransport(clients), dropout=DropoutPolicy(schedule=schedule)
    )
    return server, clients, outcome, updates, weights


def _ring_input(client: SecAggClient, config: SecAggConfig) -> np.ndarray:
    """What ``client`` put in the ring before masking, rebuilt from what it reports sending."""
    share = config.integer_weight(client.weight) / ring.weight_top(config.weight_bits)
    top = (1 << config.quant_bits) - 1
    levels = np.rint((client.sent * share + config.clip) * (top / (2 * config.clip)))
    weight = config.integer_weight(client.weight)
    digits = [(weight >> (k * config.quant_bits)) & top for k in range(config.weight_digits)]
    return np.concatenate([levels, digits, [1]]).astype(np.int64)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_the_unmasked_sum_is_the_plain_sum_of_what_the_clients_put_in(n):
    server, clients, outcome, updates, weights = _round(n)
    expected = sum(_ring_input(c, CONFIG) for c in clients.values())
    np.testing.assert_array_equal(server.unmasked.astype(np.int64), expected)
    total = sum(CONFIG.integer_weight(w) for w in weights.values())
    assert outcome.revealed.total_weight == total
    # The weighted mean, within n steps scaled by top / sum W. Each client clips its update,
    # then scales it by its fraction: sum_i top·f_i·clip(x_i).
    top = ring.weight_top(CONFIG.weight_bits)
    fractions = {c: CONFIG.integer_weight(w) / top for c, w in weights.items()}
    clipped = {c: fractions[c] * np.clip(u, -CONFIG.clip, CONFIG.clip) for c, u in updates.items()}
    exact = top * sum(clipped.values()) / total
    mean = outcome.revealed.weighted_sum / outcome.revealed.total_weight
    step = 2 * CONFIG.clip / 255
    assert np.max(np.abs(mean - exact)) <= n * step * 255 / total + 1e-6


@pytest.mark.parametrize("stage", ["share_keys", "masked_input", "unmask"])
def test_a_client_that_drops_is_left_out_and_the_count_matches_the_survivors(stage):
    server, _, outcome, _, weights = _round(5, schedule={stage: [3]})
    survivors = outcome.revealed.contributors
    assert 3 not in survivors or stage == "unmask"  # after masked_input its input counts
    assert int(server.unmasked[-1]) == len(survivors)
    assert outcome.revealed.total_weight == sum(
        CONFIG.integer_weight(weights[c]) for c in survivors
    )


@pytest.mark.parametrize("n", [2, 4, 10])
def test_the_ring_needs_no_weight_bits(n):
    fraction = CONFIG.bits(n)
    integer = SecAggConfig(clip=0.5, quant_bits=8, weight_bits=8, max_weight=300.0,
                           weighting="integer").bits(n)  # fmt: skip
    assert fraction == 8 + int(np.ceil(np.log2(n))) == integer - 8


def test_weights_wider_than_a_value_travel_as_digits_and_sum_exactly():
    config = SecAggConfig(clip=0.5, quant_bits=4, weight_bits=10, max_weight=300.0)
    assert config.weight_digits == 3
    _, _, outcome, _, weights = _round(3, config=config)
    assert outcome.revealed.total_weight == sum(config.integer_weight(w) for w in weights.values())
