"""Adaptive per-tensor ranges (``fedshield.protocols.ranges``), on their own and inside the
real ``secagg`` and ``he`` sessions: what a site reports, what the server learns (exactly the
per-tensor octave counts), how the ranges move, and that a tensor whose updates are 100x
larger than another's is neither clipped away nor quantized to zero."""

from __future__ import annotations

import numpy as np
import pytest
from enrolment import ROSTER, signing_as
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield import wire
from fedshield.crypto import ring
from fedshield.engine.dropout import DropoutPolicy
from fedshield.engine.runner import run_protocol
from fedshield.engine.transport import InProcessTransport
from fedshield.errors import ConfigError
from fedshield.protocols.he import HEClient, HEServer
from fedshield.protocols.he.keys import HEKeyring
from fedshield.protocols.he.params import HEConfig, plan_for
from fedshield.protocols.ranges import (
    BUCKETS,
    HIGH,
    INITIAL_EXPONENT,
    INITIAL_STATE_EXPONENT,
    LOW,
    MAX_EXPONENT,
    Grid,
    TensorRanges,
)
from fedshield.protocols.secagg import SecAggClient, SecAggServer
from fedshield.protocols.secagg.config import SecAggConfig

ADAPTIVE = SecAggConfig(clip=None, quant_bits=8, weight_bits=8, max_weight=100.0)
SIZES = (50, 30)  # two tensors: a small-moving one and one moving 100x more


def _updates(n, seed=0, scales=(0.001, 0.1)):
    rng = np.random.default_rng(seed)
    return {
        c: np.concatenate(
            [rng.uniform(-s, s, n).astype(np.float32) for s, n in zip(scales, SIZES, strict=True)]
        )
        for c in range(n)
    }


def _secagg_round(ranges, updates, weights, *, schedule=None, config=ADAPTIVE):
    dim = ranges.dim
    server = SecAggServer(
        roster=ROSTER, round=1, clients=list(updates), dim=dim, config=config, ranges=ranges
    )
    clients = {
        c: SecAggClient(client_id=c, **signing_as(c), round=1, update=u, weight=weights[c],
                        config=config,
                        quant_seed=c, ranges=ranges)
        for c, u in updates.items()
    }  # fmt: skip
    dropout = DropoutPolicy(schedule=schedule or {})
    outcome = run_protocol(server, InProcessTransport(clients), dropout=dropout)
    return server, clients, outcome


def _expected_counts(ranges, updates, contributors):
    """The statistic, recomputed from the raw updates as the docs define it (unweighted)."""
    counts = np.zeros((len(ranges.sizes), BUCKETS), dtype=np.int64)
    starts = np.cumsum((0, *ranges.sizes[:-1]))
    for c in contributors:
        segments = zip(starts, ranges.sizes, ranges.exponents, strict=True)
        for j, (start, size, e) in enumerate(segments):
            if size == 0:
                continue
            largest = np.max(np.abs(updates[c][start : start + size].astype(np.float64)))
            if largest == 0:
                continue  # an all-zero tensor reports nothing
            k = int(np.ceil(np.log2(largest / 2.0**e)))
            counts[j, min(HIGH, max(LOW, k)) - LOW] += 1
    return counts.reshape(-1)


def test_the_server_learns_exactly_the_per_tensor_octave_counts():
    ranges = TensorRanges(SIZES, (-3, -3))
    updates, weights = _updates(4), {0: 100.0, 1: 60.0, 2: 100.0, 3: 30.0}
    server, _, outcome = _secagg_round(ranges, updates, weights)
    revealed = outcome.revealed
    expected = _expected_counts(ranges, updates, revealed.contributors)
    np.testing.assert_array_equal(revealed.range_counts, expected)
    # ... and nothing else: the unmasked vector is the levels, the weight, a count, the counts
    assert server.unmasked.size == ranges.dim + ADAPTIVE.tail_values + len(SIZES) * BUCKETS


def test_weights_do_not_show_in_the_statistic():
    """The octave is taken before a site scales its update by its weight fraction: a
    300-sample site and a 9-sample one with the same update report the same octave."""
    ranges = TensorRanges(SIZES, (-3, -3))
    update = _updates(1)[0]
    counts = [
        _secagg_round(ranges, {0: update, 1: update}, {0: w, 1: 100.0})[2].revealed.range_counts
        for w in (100.0, 3.0)
    ]
    np.testing.assert_array_equal(counts[0], counts[1])


def test_counts_no_honest_sites_could_send_abort_the_round():
    ranges = TensorRanges((3, 0, 2), (0, 0, 0))
    honest = np.zeros((3, BUCKETS), dtype=np.int64)
    honest[0, 0], honest[2, 5] = 2, 1
    ranges.check_counts(honest.reshape(-1), 2)  # one site's last tensor was all zero
    for row, col, value in ((0, 3, 1), (1, 0, 1), (2, 1, -1)):  # 3 reports, empty, negative
        forged = honest.copy()
        forged[row, col] += value
        with pytest.raises(ValueError, match="more reports"):
            ranges.check_counts(forged.reshape(-1), 2)


def test_an_all_zero_tensor_reports_nothing_and_keeps_its_range():
    ranges = TensorRanges((2, 2), (-5, -5))
    stat = ranges.octaves(np.array([0.0, 0.0, 0.5, 0.1], np.float32))
    assert stat[:BUCKETS].sum() == 0 and stat[BUCKETS:].sum() == 1
    assert ranges.next(stat)[0] == -5


@pytest.mark.parametrize("stage", ["share_keys", "masked_input", "unmask"])
def test_a_dropped_site_is_not_counted_in_the_statistic(stage):
    ranges = TensorRanges(SIZES, (-5, 0))
    updates, weights = _updates(5, seed=1), dict.fromkeys(range(5), 100.0)
    _, _, outcome = _secagg_round(ranges, updates, weights, schedule={stage: [2]})
    revealed = outcome.revealed
    assert revealed.range_counts.reshape(len(SIZES), BUCKETS).sum(axis=1).tolist() == [
        len(revealed.contributors)
    ] * len(SIZES)
    expected = _expected_counts(ranges, updates, revealed.contributors)
    np.testing.assert_array_equal(revealed.range_counts, expected)


def _mean(outcome):
    return outcome.revealed.weighted_sum / outcome.revealed.total_weight


def test_a_tensor_moving_100x_more_is_neither_clipped_away_nor_quantized_to_zero():
    """Round one from a shared starting range learns both scales; round two then carries
    both tensors to within a fraction of their own size. A fixed range cannot do both."""
    updates, weights = _updates(4, seed=2), dict.fromkeys(range(4), 100.0)
    exact = np.mean(list(updates.values()), axis=0)
    small, large = slice(0, SIZES[0]), slice(SIZES[0], None)
    first = TensorRanges.initial(SIZES)
    _, _, outcome = _secagg_round(first, updates, weights)
    second = TensorRanges(SIZES, first.next(outcome.revealed.range_counts))
    largest = np.max(np.abs(list(updates.values())), axis=0)  # every share is 1 here
    needed = tuple(int(np.ceil(np.log2(largest[p].max()))) for p in (small, large))
    assert second.exponents == needed == (-9, -3)  # 0.001 -> 2^-9 ... 0.1 -> 2^-3
    _, _, outcome = _secagg_round(second, updates, weights)
    mean = _mean(outcome)
    for part, e in zip((small, large), second.exponents, strict=True):
        step = 2 * 2.0**e / 255  # within one step of its own 8-bit grid, no clipping
        assert np.max(np.abs(mean[part] - exact[part])) <= step
        assert np.corrcoef(mean[part], exact[part])[0, 1] > 0.99
    # A fixed range sized for the large tensor quantizes the small one to noise, and one
    # sized for the small tensor clips the large one away.
    wide, narrow = (SecAggConfig(clip=c, quant_bits=8, max_weight=100.0) for c in (0.1, 0.001))
    for config, part in ((wide, small), (narrow, large)):
        server = SecAggServer(
            roster=ROSTER, round=1, clients=list(updates), dim=first.dim, config=config
        )
        clients = {
            c: SecAggClient(client_id=c, **signing_as(c), round=1, update=u, weight=100.0,
                            config=config,
                            quant_seed=c)
            for c, u in updates.items()
        }  # fmt: skip
        fixed = _mean(run_protocol(server, InProcessTransport(clients)))
        assert np.max(np.abs(fixed[part] - exact[part])) > 0.1 * np.max(np.abs(exact[part]))


def test_he_reports_the_same_statistic_and_decodes_the_same_ranges():
    config = HEConfig(clip=None, quant_bits=8, weight_bits=8, max_weight=100.0)
    plan = plan_for(config, n_clients=3, dim=sum(SIZES), tensors=len(SIZES))
    keyring = HEKeyring.generate(plan)
    ranges = TensorRanges(SIZES, (-9, -3))
    updates, weights = _updates(3, seed=3), {0: 100.0, 1: 50.0, 2: 80.0}
    server = HEServer(round=1, clients=list(updates), dim=plan.dim, plan=plan)
    clients = {
        c: HEClient(client_id=c, round=1, update=u, weight=weights[c], keyring=keyring,
                    quant_seed=c, ranges=ranges)
        for c, u in updates.items()
    }  # fmt: skip
    run_protocol(server, InProcessTransport(clients))
    expected = _expected_counts(ranges, updates, list(updates))
    for client in clients.values():
        np.testing.assert_array_equal(client.range_counts, expected)
    weighted_sum, _ = clients[0].aggregate
    exact = sum(ring.integer_weight(weights[c], 100.0, 8) * u for c, u in updates.items())
    step_large, step_small = 2 * 2.0**-3 / 255, 2 * 2.0**-9 / 255
    err = np.abs(weighted_sum - exact)
    assert np.max(err[: SIZES[0]]) <= 3 * 255 * step_small and np.max(err[SIZES[0] :]) <= (
        3 * 255 * step_large
    )
    _, _, secagg = _secagg_round(ranges, updates, weights)
    np.testing.assert_array_equal(secagg.revealed.range_counts, expected)


def test_the_rule_moves_each_range_to_the_top_of_its_highest_occupied_octave():
    ranges = TensorRanges((4, 4, 4, 0), (-3, -3, 0, -2))
    counts = np.zeros((4, BUCKETS), dtype=np.int64)
    counts[0, [0 - LOW, -2 - LOW]] = (2, 1)  # largest site within the range: stays
    counts[1, -5 - LOW] = 3  # everyone 16x..32x below: shrinks by 2^-5
    counts[2, HIGH - LOW] = 1  # someone far above: grows by the most allowed, 2^HIGH
    # segment 3: no site reported (rand-k kept none of it): stays
    assert ranges.next(counts.reshape(-1)) == (-3, -8, HIGH, -2)
    assert TensorRanges((1,), (MAX_EXPONENT,)).next(np.eye(BUCKETS)[-1]) == (MAX_EXPONENT,)


def test_a_site_reports_one_octave_per_nonempty_tensor_and_nan_as_the_top():
    ranges = TensorRanges((3, 0, 2, 2, 1), (0, 0, -2, 0, 0))
    scaled = np.array([0.3, -0.9, 0.1, 0.25, 0.0, 0.0, 0.003, np.nan], dtype=np.float32)
    stat = ranges.octaves(scaled).reshape(5, BUCKETS)
    assert stat.sum(axis=1).tolist() == [1, 0, 1, 1, 1]
    assert [int(np.flatnonzero(row)[0]) + LOW for row in stat[[0, 2, 3, 4]]] == [0, -2, LOW, HIGH]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 20), min_size=1, max_size=5),
    exponents=st.data(),
    share=st.floats(0.01, 1.0),
)
def test_scaling_round_trips_and_the_grid_decodes_within_a_step(sizes, exponents, share):
    e = exponents.draw(st.lists(st.integers(-12, 4), min_size=len(sizes), max_size=len(sizes)))
    ranges = TensorRanges(tuple(sizes), tuple(e))
    rng = np.random.default_rng(len(sizes))
    per_value = np.repeat(np.ldexp(1.0, e), sizes)
    update = (rng.uniform(-1, 1, ranges.dim) * per_value).astype(np.float32)
    scaled = ranges.scaled(update, share)
    assert np.all(np.abs(scaled) <= share * 1.0001)
    np.testing.assert_allclose(ranges.unscale(scaled.copy()) / share, update, rtol=1e-5, atol=0)
    grid = Grid(None, ranges, 8)
    levels, stat = grid.encode(update, share, seed=7)
    sent = grid.sent(levels, share)
    assert stat.size == len(sizes) * BUCKETS and stat.sum() == sum(s > 0 for s in sizes)
    np.testing.assert_allclose(sent * share, grid.decode_sum(levels, 1), rtol=1e-4, atol=1e-12)
    assert np.all(np.abs(sent - update) <= per_value * 2 / 255 / share + 1e-9)


def test_invalid_ranges_and_grids_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="one exponent per segment"):
        TensorRanges((3, 4), (0,))
    with pytest.raises(ValueError, match="exponents must lie"):
        TensorRanges((3,), (MAX_EXPONENT + 1,))
    with pytest.raises(TypeError, match="must be integers"):
        TensorRanges((2.7,), (0,))
    with pytest.raises(TypeError, match="must be integers"):
        TensorRanges((3,), (True,))
    with pytest.raises(ValueError, match="either a fixed clip"):
        Grid(0.1, TensorRanges((3,), (0,)), 8)
    with pytest.raises(ConfigError, match="exactly when the config has no fixed clip"):
        SecAggClient(client_id=0, **signing_as(0), round=1, update=np.zeros(3, np.float32),
                     weight=1.0,
                     config=ADAPTIVE)  # fmt: skip
    with pytest.raises(ValueError, match="ranges cover"):
        SecAggClient(client_id=0, **signing_as(0), round=1, update=np.zeros(3, np.float32),
                     weight=1.0,
                     config=ADAPTIVE, ranges=TensorRanges((4,), (0,)))  # fmt: skip
    with pytest.raises(ConfigError, match="number of tensors"):
        plan_for(HEConfig(clip=None), n_clients=3, dim=10)


def test_a_client_whose_ranges_differ_from_the_servers_refuses_the_round():
    """Five clients (one refusal leaves the consistency quorum of four)."""
    updates, weights = _updates(5), dict.fromkeys(range(5), 100.0)
    ranges = TensorRanges(SIZES, (-5, -2))
    server = SecAggServer(roster=ROSTER, round=1, clients=list(range(5)), dim=ranges.dim,
                          config=ADAPTIVE, ranges=ranges)  # fmt: skip
    other = TensorRanges(SIZES, (-5, -1))
    clients = {
        c: SecAggClient(client_id=c, **signing_as(c), round=1, update=u, weight=weights[c],
                        config=ADAPTIVE, ranges=other if c == 2 else ranges)
        for c, u in updates.items()
    }  # fmt: skip
    outcome = run_protocol(server, InProcessTransport(clients))
    assert outcome.revealed.contributors == (0, 1, 3, 4)  # client 2 refused: parameters differ
    assert "parameters differ" in outcome.stages[0].rejected[2]


def test_round_one_starts_buffers_wider_than_trainable_tensors():
    assert TensorRanges.initial_exponents([True, False]) == (
        INITIAL_EXPONENT,
        INITIAL_STATE_EXPONENT,
    )
    assert INITIAL_STATE_EXPONENT > INITIAL_EXPONENT


class _SplitViewRelay(InProcessTransport):
    """A malicious server's relay: each client is told the parameter digest of the ranges it
    was given, so no client sees that the others got different ones."""

    def __init__(self, sessions, digests):
        super().__init__(sessions)
        self.digests = digests

    def exchange(self, stage, messages):
        if stage == "advertise_keys":
            messages = {c: self._retold(m, self.digests[c]) for c, m in messages.items()}
        return super().exchange(stage, messages)

    @staticmethod
    def _retold(message, digest):
        parsed = wire.parse(message)
        return wire.serialize(parsed.header, [digest, *parsed.fields[1:]])


def test_a_server_giving_one_client_other_ranges_learns_nothing_of_its_update():
    """The attack: the victim quantizes on a normal range, everyone else on a huge one, so
    their levels sit at the grid's middle and the sum decoded on the victim's range would be
    the victim's update alone. The ranges are bound into every pairwise mask, so clients
    with different ranges do not cancel each other's masks: the sum is noise or the round
    aborts, and the victim's update stays hidden."""
    n, victim = 5, 0
    rng = np.random.default_rng(9)
    updates = {c: rng.uniform(-0.1, 0.1, sum(SIZES)).astype(np.float32) for c in range(n)}
    honest, huge = TensorRanges(SIZES, (-3, -3)), TensorRanges(SIZES, (15, 15))
    given_ranges = {c: honest if c == victim else huge for c in range(n)}
    server = SecAggServer(roster=ROSTER, round=1, clients=list(range(n)), dim=honest.dim,
                          config=ADAPTIVE,
                          ranges=honest)  # fmt: skip
    clients = {
        c: SecAggClient(client_id=c, **signing_as(c), round=1, update=updates[c], weight=100.0,
                        config=ADAPTIVE,
                        quant_seed=c, ranges=given_ranges[c])
        for c in range(n)
    }  # fmt: skip
    digests = {c: ADAPTIVE.digest(given_ranges[c]) for c in range(n)}
    outcome = run_protocol(server, _SplitViewRelay(clients, digests))
    if outcome.revealed is None:
        return  # the round aborted: nothing revealed
    learned = outcome.revealed.weighted_sum / ring.weight_top(ADAPTIVE.weight_bits)
    assert abs(np.corrcoef(learned, updates[victim])[0, 1]) < 0.3
