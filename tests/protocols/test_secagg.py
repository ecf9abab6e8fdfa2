"""SecAgg+ as an auditor checks it: exactness, dropouts, the server's view, tampering."""

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
from fedshield.errors import (
    IllegalTransition,
    SecAggAbort,
    UnknownSender,
    WrongRound,
)
from fedshield.protocols.secagg import STAGES, SecAggClient, SecAggServer
from fedshield.protocols.secagg.config import SecAggConfig

CONFIG = SecAggConfig(clip=1.0, quant_bits=8, weight_bits=4, max_weight=15.0, weighting="integer")


def _levels(n, d, seed=0):
    rng = np.random.default_rng(seed)
    return {c: rng.integers(0, 256, size=d).astype(np.uint64) for c in range(n)}


def _decode_levels(server, revealed, d):
    """The unmasked integer sum the server computed (weighted levels), checked against the
    revealed weight; the float mean is derived from exactly this vector."""
    assert int(server.unmasked[-1]) == revealed.total_weight
    return server.unmasked[:-1].astype(np.int64)


def _inputs(n, d, seed=0):
    """Updates that sit exactly on quantization levels, so stochastic rounding is the identity."""
    levels = _levels(n, d, seed)
    updates = {
        c: (lv.astype(np.float64) * (2 * CONFIG.clip / 255) - CONFIG.clip).astype(np.float32)
        for c, lv in levels.items()
    }
    # float32 can sit a hair off a level; re-derive the levels the encoder will see.
    levels = {
        c: np.rint((u.astype(np.float64) + CONFIG.clip) * (255 / (2 * CONFIG.clip))).astype(
            np.int64
        )
        for c, u in updates.items()
    }
    weights = {c: float(1 + (c * 7) % 15) for c in range(n)}
    return updates, levels, weights


def _run(n, d, *, config=CONFIG, schedule=None, round=0, seed=0, transport_cls=InProcessTransport):
    updates, levels, weights = _inputs(n, d, seed)
    server = SecAggServer(roster=ROSTER, round=round, clients=range(n), dim=d, config=config)
    clients = {
        c: SecAggClient(
            client_id=c,
            **signing_as(c),
            round=round,
            update=updates[c],
            weight=weights[c],
            config=config,
        )
        for c in range(n)
    }
    outcome = run_protocol(server, transport_cls(clients), dropout=DropoutPolicy(schedule=schedule))
    # A float32 input a hair off a level rounds (stochastically, from a fresh seed) to the
    # neighbouring level once in a while: take the levels each client actually sent.
    top = 2**config.quant_bits - 1
    for c, client in clients.items():
        if client.sent is not None:
            scaled = (client.sent.astype(np.float64) + config.clip) * (top / (2 * config.clip))
            levels[c] = np.rint(scaled).astype(np.int64)
    return server, outcome, levels, weights


def _expected_level_sum(levels, weights, survivors, config=CONFIG):
    return sum(config.integer_weight(weights[c]) * levels[c] for c in survivors)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 12])
def test_unmasked_sum_equals_the_plain_integer_sum(n):
    d = 257
    server, outcome, levels, weights = _run(
        n,
        d,
        config=SecAggConfig(
            clip=1.0,
            quant_bits=8,
            weight_bits=4,
            max_weight=15.0,
            threshold=1 if n < 3 else None,
            weighting="integer",
        ),
    )
    revealed = outcome.revealed
    assert revealed.contributors == tuple(range(n))
    assert revealed.total_weight == sum(CONFIG.integer_weight(w) for w in weights.values())
    got = _decode_levels(server, revealed, d)
    np.testing.assert_array_equal(got, _expected_level_sum(levels, weights, range(n)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_dropout_pattern_gives_the_exact_aggregate_or_a_typed_abort(data):
    n = data.draw(st.integers(2, 12), label="n")
    t = data.draw(st.integers(1, n), label="t")
    schedule, gone = {}, set()
    for stage in STAGES:
        drop = data.draw(st.sets(st.sampled_from(range(n)), max_size=n), label=stage)
        schedule[stage] = sorted(drop - gone)
        gone |= drop
    config = SecAggConfig(
        clip=1.0, quant_bits=8, weight_bits=4, max_weight=15.0, threshold=t, weighting="integer"
    )
    d = 31
    server, outcome, levels, weights = _run(n, d, config=config, schedule=schedule)
    alive = set(range(n))
    enough = True
    for stage in STAGES:
        if stage == "expel":  # no cheater, so nobody is asked: dropping there costs nothing
            break
        alive -= set(schedule[stage])
        enough &= len(alive) >= t
        if stage == "consistency":  # the survivor set needs a quorum of signatures
            enough &= len(alive) >= config.quorum(n)
    if not enough:
        assert outcome.revealed is None
        assert "threshold" in outcome.aborted or "quorum" in outcome.aborted
        return
    # Survivors: everyone who delivered a masked input (dropping at unmask still counts).
    survivors = (
        set(range(n))
        - set(schedule["advertise_keys"])
        - set(schedule["share_keys"])
        - set(schedule["masked_input"])
    )
    assert outcome.revealed is not None, outcome.aborted
    assert outcome.revealed.contributors == tuple(sorted(survivors))
    np.testing.assert_array_equal(
        _decode_levels(server, outcome.revealed, d),
        _expected_level_sum(levels, weights, survivors, config),
    )


def _masked_uploads(n, d, round, same_input_seed=0):
    captured = {}

    class Capture(InProcessTransport):
        def exchange(self, stage, messages):
            replies = super().exchange(stage, messages)
            if stage == "masked_input":
                for c, r in replies.items():
                    captured[c] = wire.parse(r.data).raw(3)
            return replies

    server, _, _, _ = _run(n, d, round=round, seed=same_input_seed, transport_cls=Capture)
    return server, captured


def test_masked_uploads_look_uniform_over_the_ring_and_change_every_round():
    n, d = 4, 20_000
    server, uploads = _masked_uploads(n, d, round=0)
    bits = server.bits
    for packed in uploads.values():
        values = ring.unpack(packed, d + 1, bits)
        bins = 64  # chi-square over the top 6 bits of each ring element
        counts = np.bincount((values >> np.uint64(bits - 6)).astype(np.int64), minlength=bins)
        expected = len(values) / bins
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < 120  # df = 63: p < 1e-5 above this
    _, uploads_next = _masked_uploads(n, d, round=1)
    a = ring.unpack(uploads[0], d + 1, bits).astype(np.float64)
    b = ring.unpack(uploads_next[0], d + 1, bits).astype(np.float64)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.05  # same input, unrelated masked vectors


def test_packed_upload_uses_ring_bits_per_value():
    server, uploads = _masked_uploads(5, 1000, round=0)
    assert server.bits == 8 + 4 + 3
    assert all(len(p) == (1001 * server.bits + 7) // 8 for p in uploads.values())


class _FlipShareByte(InProcessTransport):
    """Flips one byte of client 1's first sealed share as the server relays it."""

    def exchange(self, stage, messages):
        replies = super().exchange(stage, messages)
        if stage == "share_keys" and 1 in replies:
            msg = wire.parse(replies[1].data)
            receivers, blob, commitment, signatures, unusable, dealt = msg.fields
            blob = bytearray(blob)
            blob[40] ^= 0xFF
            fields = [receivers, bytes(blob), commitment, signatures, unusable, dealt]
            replies[1] = Reply(wire.serialize(msg.header, fields))
        return replies


def test_flipped_byte_in_a_sealed_share_drops_its_sender_and_the_round_completes():
    """Altered on the way, the blob no longer matches its sender's signature on what it
    dealt, which the server checks on arrival: it drops the sender at once."""
    server, outcome, levels, weights = _run(5, 40, transport_cls=_FlipShareByte)
    assert outcome.revealed is not None
    assert "signature" in outcome.stages[1].rejected[1]
    assert 1 not in outcome.revealed.contributors
    np.testing.assert_array_equal(
        _decode_levels(server, outcome.revealed, 40),
        _expected_level_sum(levels, weights, [0, 2, 3, 4]),
    )


def _sessions(n, d, round):
    """A server and its clients for one round, not yet driven."""
    updates, _, weights = _inputs(n, d)
    server = SecAggServer(roster=ROSTER, round=round, clients=range(n), dim=d, config=CONFIG)
    clients = {
        c: SecAggClient(
            client_id=c,
            **signing_as(c),
            round=round,
            update=updates[c],
            weight=weights[c],
            config=CONFIG,
        )
        for c in range(n)
    }
    return server, clients


def _drive(server, clients, stages):
    """Run ``stages`` honestly, by hand (no runner)."""
    for stage in stages:
        for c, m in server.broadcast(stage).items():
            server.receive(stage, c, clients[c].handle(stage, m))
        server.close_stage(stage)


def test_share_replayed_from_another_round_is_rejected():
    old_server, old = _sessions(3, 8, round=0)
    new_server, new = _sessions(3, 8, round=1)
    _drive(old_server, old, STAGES[:1])
    _drive(new_server, new, STAGES[:1])
    stale = old[0].handle("share_keys", old_server.broadcast("share_keys")[0])
    new_server.broadcast("share_keys")
    with pytest.raises(WrongRound):
        new_server.receive("share_keys", 0, stale)
    assert 0 not in new_server.alive


def test_message_from_an_unknown_sender_is_rejected_and_the_round_completes():
    class Intruder(InProcessTransport):
        def exchange(self, stage, messages):
            replies = super().exchange(stage, messages)
            if stage == "masked_input":
                replies[99] = replies[0]
            return replies

    server = SecAggServer(roster=ROSTER, round=0, clients=range(3), dim=8, config=CONFIG)
    server.broadcast("advertise_keys")
    with pytest.raises(UnknownSender):
        server.receive("advertise_keys", 99, b"")
    _, outcome, _, _ = _run(3, 8, transport_cls=Intruder)
    assert outcome.revealed is not None
    assert "UnknownSender" in outcome.stages[2].rejected[99]


def test_too_few_survivors_abort_and_reveal_nothing():
    config = SecAggConfig(
        clip=1.0, quant_bits=8, weight_bits=4, max_weight=15.0, threshold=3, weighting="integer"
    )
    server, outcome, _, _ = _run(4, 8, config=config, schedule={"masked_input": [0, 1]})
    assert outcome.revealed is None and "threshold is 3" in outcome.aborted
    with pytest.raises(IllegalTransition):
        server.reveal()


def test_client_refuses_survivors_outside_the_set_it_masked_against():
    server, clients = _sessions(3, 8, round=0)
    _drive(server, clients, STAGES[:3])
    header = wire.Header(2, 4, 0, wire.SERVER_ID)
    stranger = wire.serialize(header, [np.array([0, 1, 2, 7], np.uint32)])
    with pytest.raises(SecAggAbort, match="not a subset"):
        clients[0].handle("consistency", stranger)


def test_unweighted_mode_saves_the_weight_bits_and_counts_survivors():
    config = SecAggConfig(clip=1.0, quant_bits=8, weight_bits=0, weighting="integer")
    server, outcome, levels, _ = _run(5, 16, config=config, schedule={"masked_input": [3]})
    assert server.bits == 8 + 3
    assert outcome.revealed.total_weight == 4
    np.testing.assert_array_equal(
        _decode_levels(server, outcome.revealed, 16), sum(levels[c] for c in (0, 1, 2, 4))
    )


def test_low_order_public_key_is_rejected_and_the_round_completes():
    class ZeroKey(InProcessTransport):
        def exchange(self, stage, messages):
            replies = super().exchange(stage, messages)
            if stage == "advertise_keys":
                header = wire.parse(replies[2].data).header
                _, _, *rest = wire.parse(replies[2].data).fields
                replies[2] = Reply(wire.serialize(header, [bytes(32), bytes(32), *rest]))
            return replies

    server, outcome, levels, weights = _run(5, 16, transport_cls=ZeroKey)
    assert "low-order" in outcome.stages[0].rejected[2]
    np.testing.assert_array_equal(
        _decode_levels(server, outcome.revealed, 16),
        _expected_level_sum(levels, weights, [0, 1, 3, 4]),
    )


def test_forged_unmask_shares_abort_the_round_instead_of_crashing_the_server():
    class Forge(InProcessTransport):
        def exchange(self, stage, messages):
            replies = super().exchange(stage, messages)
            if stage == "unmask":
                for c, reply in replies.items():
                    msg = wire.parse(reply.data)
                    ids_b, blob_b, ids_s, blob_s = msg.fields
                    blob_b = bytearray(blob_b)
                    for i in range(len(ids_b)):  # perturb y of every share, keep the format
                        blob_b[i * 71 + 5] ^= 1
                    fields = [ids_b, bytes(blob_b), ids_s, blob_s]
                    replies[c] = Reply(wire.serialize(msg.header, fields))
            return replies

    _, outcome, _, _ = _run(3, 16, transport_cls=Forge)
    assert outcome.revealed is None and "cannot unmask" in outcome.aborted


def forging_client_0(every: bool) -> type[InProcessTransport]:
    """A transport where client 0 flips one bit in the first (or every) self-mask-seed share
    it reveals at ``unmask``."""

    class Forge(InProcessTransport):
        def exchange(self, stage, messages):
            replies = super().exchange(stage, messages)
            if stage == "unmask":
                msg = wire.parse(replies[0].data)
                ids_b, blob_b, ids_s, blob_s = msg.fields
                blob_b = bytearray(blob_b)
                for i in range(len(ids_b)) if every else [0]:
                    blob_b[i * 71 + 5] ^= 1
                fields = [ids_b, bytes(blob_b), ids_s, blob_s]
                replies[0] = Reply(wire.serialize(msg.header, fields))
            return replies

    return Forge


def test_one_forged_share_is_outvoted_when_spare_shares_exist():
    ForgeOne = forging_client_0(every=False)

    config = SecAggConfig(
        clip=1.0, quant_bits=8, weight_bits=4, max_weight=15.0, threshold=3, weighting="integer"
    )
    server, outcome, levels, weights = _run(5, 16, config=config, transport_cls=ForgeOne)
    np.testing.assert_array_equal(
        _decode_levels(server, outcome.revealed, 16),
        _expected_level_sum(levels, weights, range(5), config),
    )


def test_sealed_share_replayed_from_an_earlier_round_fails_authentication():
    """An old ciphertext slipped into a new round's relay is caught (AEAD binds the round)."""
    old_blobs = {}

    class Keep(InProcessTransport):
        def exchange(self, stage, messages):
            replies = super().exchange(stage, messages)
            if stage == "share_keys":
                old_blobs.update({c: wire.parse(r.data).fields for c, r in replies.items()})
            return replies

    _run(5, 8, round=0, transport_cls=Keep)
    old = dict(old_blobs)

    class Replay(InProcessTransport):
        def exchange(self, stage, messages):
            replies = super().exchange(stage, messages)
            if stage == "share_keys":
                msg = wire.parse(replies[1].data)
                receivers, _, commitment, _, unusable, _ = msg.fields  # old blobs, signature
                fields = [receivers, old[1][1], commitment, old[1][3], unusable, old[1][5]]
                replies[1] = Reply(wire.serialize(msg.header, fields))
            return replies

    server, outcome, levels, weights = _run(5, 8, round=1, transport_cls=Replay)
    assert outcome.revealed.contributors == (0, 2, 3, 4)  # 1's stale shares got it dropped
    np.testing.assert_array_equal(
        _decode_levels(server, outcome.revealed, 8),
        _expected_level_sum(levels, weights, [0, 2, 3, 4]),
    )
