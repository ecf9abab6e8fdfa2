"""Evaluation counts summed under SecAgg+ (CountGrid), as an adversary sees them: exact integer
sums under every tolerated dropout pattern, masked uploads, typed refusals of bad input."""

import hashlib
import json
from dataclasses import asdict, replace

import numpy as np
import pytest
from enrolment import ROSTER, signing_as
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedshield import wire
from fedshield.crypto import ring
from fedshield.engine.dropout import DropoutPolicy
from fedshield.engine.runner import run_protocol
from fedshield.engine.transport import InProcessTransport, Reply
from fedshield.errors import ConfigError, InvalidMessage, WrongRound
from fedshield.protocols.counts import CountGrid, count_ring_bits
from fedshield.protocols.registry import get_protocol
from fedshield.protocols.secagg import STAGES, SecAggClient, SecAggServer
from fedshield.protocols.secagg.config import SecAggConfig

MAX = 1000
BASE = SecAggConfig(clip=1.0, max_weight=1.0)
COUNTS = replace(BASE, counts=MAX, weight_bits=0)


def _counts(n, d, seed=0, high=MAX):
    rng = np.random.default_rng(seed)
    return {c: rng.integers(0, high + 1, size=d).astype(np.float32) for c in range(n)}


def _sessions(inputs, config=COUNTS, round=1):
    return {
        c: SecAggClient(
            client_id=c, **signing_as(c), round=round, update=v, weight=1.0, config=config
        )
        for c, v in inputs.items()
    }


def _run(inputs, *, config=COUNTS, schedule=None, transport_cls=InProcessTransport, round=1):
    d = len(next(iter(inputs.values())))
    server = SecAggServer(roster=ROSTER, round=round, clients=sorted(inputs), dim=d, config=config)
    clients = _sessions(inputs, config, round)
    policy = DropoutPolicy(schedule=schedule or {})
    return server, run_protocol(server, transport_cls(clients), dropout=policy)


def test_update_session_digest_is_unchanged_by_the_counts_field():
    # the digest of an update session as it was before ``counts`` existed: asdict without it
    fields = {k: v for k, v in asdict(BASE).items() if k != "counts"}
    before = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).digest()
    assert BASE.digest() == before
    assert COUNTS.digest() != BASE.digest()  # the count session binds its own parameters


def test_ring_is_sized_to_the_counts_and_the_spec_derives_the_count_session():
    assert COUNTS.bits(3) == count_ring_bits(3, MAX) == 12  # 3 * 1000 < 4096
    assert replace(COUNTS, counts=65_535).bits(10) == 20
    spec = get_protocol("secagg", max_weight=10.0, clip=0.1, quant_bits=8, sites=5)
    counted = spec.for_counts(MAX)
    assert counted.config.counts == MAX and counted.config.weight_bits == 0
    assert counted.config.min_clients == spec.config.min_clients  # the same pinned minimum
    assert spec.config.counts is None and spec.config.digest() != counted.config.digest()
    assert get_protocol("plain").for_counts(MAX) is None


@pytest.mark.parametrize("n", [1, 3, 5])
def test_unmasked_sum_is_the_exact_integer_sum(n):
    inputs = _counts(n, 301, seed=n)
    inputs[0][:3] = [0, MAX, MAX]  # the bounds themselves
    config = replace(COUNTS, threshold=1) if n < 3 else COUNTS
    _, outcome = _run(inputs, config=config)
    assert outcome.revealed.contributors == tuple(range(n))
    expected = sum(v.astype(np.int64) for v in inputs.values())
    np.testing.assert_array_equal(outcome.revealed.weighted_sum, expected)
    assert outcome.revealed.weighted_sum.dtype == np.int64


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_dropout_pattern_sums_the_survivors_exactly_or_aborts(data):
    n = data.draw(st.integers(2, 8), label="n")
    schedule, gone = {}, set()
    for stage in STAGES:
        drop = data.draw(st.sets(st.sampled_from(range(n)), max_size=n), label=stage)
        schedule[stage] = sorted(drop - gone)
        gone |= drop
    inputs = _counts(n, 17, seed=n)
    _, outcome = _run(inputs, schedule=schedule)
    if outcome.revealed is None:
        assert outcome.aborted
        return
    survivors = outcome.revealed.contributors
    early = {*schedule["advertise_keys"], *schedule["share_keys"], *schedule["masked_input"]}
    assert set(survivors) == set(range(n)) - early
    expected = sum(inputs[c].astype(np.int64) for c in survivors)
    np.testing.assert_array_equal(outcome.revealed.weighted_sum, expected)


class _Capture(InProcessTransport):
    """What the server receives at ``masked_input``: each site's packed upload."""

    def __init__(self, sessions):
        super().__init__(sessions)
        self.uploads = {}

    def exchange(self, stage, messages):
        replies = super().exchange(stage, messages)
        if stage == "masked_input":
            self.uploads = {c: wire.parse(r.data).raw(3) for c, r in replies.items() if r.data}
        return replies


def test_in_the_clear_the_server_reads_a_sites_histogram_under_secagg_it_sees_noise():
    from fedshield.engine.evaluation import AUC_BINS, EvaluationSummary
    from fedshield.engine.secure_eval import count_vector

    rng = np.random.default_rng(5)
    summaries = []
    for _ in range(3):  # 20 test examples per site: its histogram nearly lists their scores
        labels = rng.integers(0, 2, 20)
        summaries.append(EvaluationSummary.of(labels, rng.random(20), 0.5))
    # clear path: the site's message is its summary, the server reads its histograms
    clear = EvaluationSummary.from_vector(summaries[0].to_vector(), classes=2)
    assert np.array_equal(clear.members, summaries[0].members)
    # secure path: the server's view of each upload is uniform over the ring
    inputs = {c: count_vector(s) for c, s in enumerate(summaries)}
    config = replace(COUNTS, counts=65_535)
    captured = {}

    class Capture(_Capture):
        def __init__(self, sessions):
            super().__init__(sessions)
            captured["t"] = self

    server, outcome = _run(inputs, config=config, transport_cls=Capture)
    bits, d = server.bits, len(inputs[0])
    assert sorted(captured["t"].uploads) == [0, 1, 2]
    for c, packed in captured["t"].uploads.items():
        values = ring.unpack(packed, d + config.tail_values, bits)[:d].astype(np.int64)
        counts = np.bincount(values >> (bits - 6), minlength=64)  # top 6 bits
        expected = len(values) / 64
        assert ((counts - expected) ** 2 / expected).sum() < 120  # df 63: p < 1e-5 above
        histogram = values[2 + 4 : 2 + 4 + AUC_BINS]  # the members' bins, masked
        assert not np.array_equal(histogram, summaries[c].members[0])
        assert (histogram > MAX).mean() > 0.9  # no count of a 20-example set is that large
    # only the sum is revealed
    total = sum(summaries[1:], summaries[0])
    np.testing.assert_array_equal(outcome.revealed.weighted_sum, np.delete(total.to_vector(), 1))


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([MAX + 1, 0, 0], np.float32), "lie in"),
        (np.array([1.5, 0, 0], np.float32), "integers"),
        (np.array([-1, 0, 0], np.float32), "lie in"),
    ],
)
def test_a_count_beyond_the_bound_is_refused_at_the_site_before_it_sends(bad, match):
    grid = CountGrid(MAX)
    with pytest.raises(ConfigError, match=match):
        grid.encode(bad, 1.0, seed=0)
    inputs = {0: bad, **{c: np.full(3, c, np.float32) for c in (1, 2, 3)}}
    seen = {}

    class Watch(InProcessTransport):
        def exchange(self, stage, messages):
            replies = super().exchange(stage, messages)
            if stage == "masked_input":
                seen.update(replies)
            return replies

    config = replace(COUNTS, threshold=2, colluders=0)  # quorum 3 of 4: one may drop late
    _, outcome = _run(inputs, config=config, transport_cls=Watch)
    assert seen[0].data is None and "ConfigError" in seen[0].error  # refused: nothing sent
    assert outcome.revealed.contributors == (1, 2, 3)
    np.testing.assert_array_equal(outcome.revealed.weighted_sum, [6, 6, 6])


def test_grid_and_config_refuse_bad_parameters():
    with pytest.raises(ConfigError, match="max_count"):
        CountGrid(0)
    with pytest.raises(TypeError):
        CountGrid(1.5)
    with pytest.raises(ConfigError, match="weight_bits=0"):
        SecAggConfig(counts=10)  # weighted
    with pytest.raises(ConfigError, match="max_count"):
        SecAggConfig(counts=2**24, weight_bits=0)
    with pytest.raises(ConfigError, match="NaN"):
        CountGrid(MAX).check(np.array([np.nan]))
    with pytest.raises(InvalidMessage, match="unweighted"):
        CountGrid(MAX).encode(np.zeros(2, np.float32), 0.5, seed=0)


class _Tamper(InProcessTransport):
    """Replaces client 0's ``masked_input`` reply with ``change(reply bytes, replies)``."""

    change = None

    def exchange(self, stage, messages):
        replies = super().exchange(stage, messages)
        if stage == "masked_input" and replies[0].data is not None:
            replies[0] = Reply(type(self).change(replies[0].data, replies), replies[0].seconds)
        return replies


def _resend(data, **header):
    message = wire.parse(data)
    h = message.header
    fields = [f if isinstance(f, np.ndarray) else bytes(f) for f in message.fields]
    return wire.serialize(wire.Header(h.protocol, h.stage, header.get("round", h.round),
                                      header.get("sender", h.sender)), fields)  # fmt: skip


@pytest.mark.parametrize(
    "change",
    [
        lambda data, replies: data[:-5],  # wrong length (truncated upload)
        lambda data, replies: _resend(data, round=0),  # a replay from another round
        lambda data, replies: _resend(data, sender=2),  # claims another sender
        lambda data, replies: replies[1].data,  # client 1's upload replayed as client 0's
    ],
    ids=["wrong-length", "wrong-round", "wrong-sender", "replay"],
)
def test_a_malformed_or_replayed_upload_drops_its_sender_and_the_round_completes(change):
    inputs = _counts(4, 50, seed=9)

    class Tamper(_Tamper):
        pass

    Tamper.change = staticmethod(change)
    _, outcome = _run(inputs, config=replace(COUNTS, threshold=2, colluders=0),
                      transport_cls=Tamper)  # fmt: skip
    assert outcome.revealed is not None, outcome.aborted
    assert 0 not in outcome.revealed.contributors
    expected = sum(inputs[c].astype(np.int64) for c in outcome.revealed.contributors)
    np.testing.assert_array_equal(outcome.revealed.weighted_sum, expected)
    stats = {s.stage: s for s in outcome.stages}["masked_input"]
    assert any(
        e in stats.rejected.get(0, "") for e in ("Shape", "Round", "Sender", "Malformed", "Replay")
    ), stats.rejected


def test_a_sum_beyond_what_honest_sites_could_send_is_refused_at_the_server():
    grid = CountGrid(MAX)
    values = np.array([2 * MAX + 1, 0, 2, 2], np.uint64)  # [2 counts][digit sum][sites]
    with pytest.raises(ValueError, match="exceeds"):
        grid.decode_checked(values, 2, config=COUNTS, dim=2)
    with pytest.raises(ValueError, match="weight"):
        grid.decode_checked(np.array([5, 0, 3, 2], np.uint64), 2, config=COUNTS, dim=2)
    with pytest.raises(WrongRound):  # a replayed upload of round 1 in round 2's session
        clients = _sessions(_counts(1, 3), replace(COUNTS, threshold=1), round=1)
        server = SecAggServer(roster=ROSTER, round=2, clients=[0], dim=3,
                              config=replace(COUNTS, threshold=1))  # fmt: skip
        server.receive(STAGES[0], 0, clients[0].handle(STAGES[0], server.broadcast(STAGES[0])[0]))
