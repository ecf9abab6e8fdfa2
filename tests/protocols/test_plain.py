import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield import wire
from fedshield.engine.dropout import DropoutPolicy
from fedshield.engine.runner import run_protocol
from fedshield.engine.transport import InProcessTransport
from fedshield.errors import (
    IllegalTransition,
    MalformedMessage,
    NonFiniteValues,
    ReplayedMessage,
    UnknownSender,
    WrongRound,
    WrongShape,
)
from fedshield.protocols.plain import PROTOCOL_ID, PlainClient, PlainServer

DIM = 6


def _clients(n, round=0, seed=0):
    rng = np.random.default_rng(seed)
    return {
        c: PlainClient(
            client_id=c,
            round=round,
            update=rng.normal(size=DIM).astype(np.float32),
            weight=float(c + 1),
        )
        for c in range(n)
    }


def _expected(clients, ids):
    total = sum(clients[c].weight for c in ids)
    return sum(clients[c].weight * clients[c].update.astype(np.float64) for c in ids), total


def test_aggregate_equals_the_plain_weighted_sum():
    clients = _clients(4)
    server = PlainServer(round=0, clients=clients, dim=DIM)
    outcome = run_protocol(server, InProcessTransport(clients))
    wsum, total = _expected(clients, range(4))
    np.testing.assert_allclose(outcome.revealed.weighted_sum, wsum, rtol=1e-12)
    assert outcome.revealed.total_weight == total
    assert outcome.revealed.contributors == (0, 1, 2, 3)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 8), dropped=st.sets(st.integers(0, 7)))
def test_any_dropout_set_gives_the_survivors_aggregate_or_an_abort(n, dropped):
    clients = _clients(n)
    dropped = {c for c in dropped if c < n}
    server = PlainServer(round=0, clients=clients, dim=DIM)
    policy = DropoutPolicy(schedule={"input": sorted(dropped)})
    outcome = run_protocol(server, InProcessTransport(clients), dropout=policy)
    survivors = [c for c in range(n) if c not in dropped]
    if not survivors:
        assert outcome.revealed is None and "no client" in outcome.aborted
        return
    wsum, total = _expected(clients, survivors)
    np.testing.assert_allclose(outcome.revealed.weighted_sum, wsum, rtol=1e-12)
    assert outcome.revealed.total_weight == total
    assert outcome.revealed.dropped == tuple(sorted(dropped))


def _bad_answers(good: bytes, sender: int):
    """Malformed variants of client ``sender``'s honest answer, and the error each must raise."""
    msg = wire.parse(good)
    weight, update = msg.fields
    header = msg.header

    def with_(header=header, fields=(weight, update)):
        return wire.serialize(header, list(fields))

    nan_update = update.copy()
    nan_update[0] = np.nan
    return {
        "truncated": (good[:-3], MalformedMessage),
        "oversized": (with_(fields=(weight, np.zeros(10_000, np.float32))), MalformedMessage),
        "wrong round": (with_(header=wire.Header(PROTOCOL_ID, 1, 5, sender)), WrongRound),
        "other sender in header": (
            with_(header=wire.Header(PROTOCOL_ID, 1, 0, sender + 100)),
            UnknownSender,
        ),
        "wrong length": (with_(fields=(weight, update[:-1])), WrongShape),
        "wrong dtype": (with_(fields=(weight, update.astype(np.float64))), WrongShape),
        "NaN": (with_(fields=(weight, nan_update)), NonFiniteValues),
        "infinite weight": (with_(fields=(np.array([np.inf]), update)), WrongShape),
        "missing field": (with_(fields=(weight,)), WrongShape),
    }


@pytest.mark.parametrize(
    "case",
    [
        "truncated",
        "oversized",
        "wrong round",
        "other sender in header",
        "wrong length",
        "wrong dtype",
        "NaN",
        "infinite weight",
        "missing field",
    ],
)
def test_malformed_answer_is_rejected_and_the_honest_round_completes(case):
    clients = _clients(3)
    server = PlainServer(round=0, clients=clients, dim=DIM)
    request = server.broadcast("input")
    answers = {c: clients[c].handle("input", request[c]) for c in clients}
    bad, error = _bad_answers(answers[1], 1)[case]
    server.receive("input", 0, answers[0])
    with pytest.raises(error):
        server.receive("input", 1, bad)
    server.receive("input", 2, answers[2])
    server.close_stage("input")
    revealed = server.reveal()
    wsum, total = _expected(clients, [0, 2])
    np.testing.assert_allclose(revealed.weighted_sum, wsum, rtol=1e-12)
    assert revealed.total_weight == total and revealed.dropped == (1,)


def test_unknown_sender_and_replay_are_rejected_without_losing_the_aggregate():
    clients = _clients(2)
    server = PlainServer(round=0, clients=[0, 1], dim=DIM)
    request = server.broadcast("input")
    answer0 = clients[0].handle("input", request[0])
    server.receive("input", 0, answer0)
    with pytest.raises(ReplayedMessage):
        server.receive("input", 0, answer0)
    with pytest.raises(UnknownSender):
        server.receive("input", 9, answer0)
    server.receive("input", 1, clients[1].handle("input", request[1]))
    server.close_stage("input")
    wsum, _total = _expected(clients, [0, 1])
    np.testing.assert_allclose(server.reveal().weighted_sum, wsum, rtol=1e-12)


def test_replay_from_an_earlier_round_is_rejected():
    old = _clients(2, round=0)
    server0 = PlainServer(round=0, clients=[0, 1], dim=DIM)
    stale = old[0].handle("input", server0.broadcast("input")[0])
    server1 = PlainServer(round=1, clients=[0, 1], dim=DIM)
    server1.broadcast("input")
    with pytest.raises(WrongRound):
        server1.receive("input", 0, stale)


def test_malformed_answer_through_the_runner_counts_as_a_dropout():
    clients = _clients(3)

    class Tamper(InProcessTransport):
        def exchange(self, stage, messages):
            replies = super().exchange(stage, messages)
            replies[2] = type(replies[2])(replies[2].data[:-1], replies[2].seconds)
            return replies

    server = PlainServer(round=0, clients=clients, dim=DIM)
    outcome = run_protocol(server, Tamper(clients))
    assert outcome.revealed.contributors == (0, 1)
    assert "MalformedMessage" in outcome.stages[0].rejected[2]


def test_client_rejects_a_server_message_for_another_round():
    client = _clients(1, round=3)[0]
    request = PlainServer(round=2, clients=[0], dim=DIM).broadcast("input")[0]
    with pytest.raises(WrongRound):
        client.handle("input", request)


def test_stage_transitions_are_checked():
    clients = _clients(1)
    server = PlainServer(round=0, clients=[0], dim=DIM)
    with pytest.raises(IllegalTransition):
        server.receive("input", 0, b"")
    with pytest.raises(IllegalTransition):
        server.reveal()
    with pytest.raises(IllegalTransition):
        server.broadcast("unmask")
    request = server.broadcast("input")
    with pytest.raises(IllegalTransition):
        server.broadcast("input")
    server.receive("input", 0, clients[0].handle("input", request[0]))
    with pytest.raises(IllegalTransition):
        clients[0].handle("input", request[0])
    server.close_stage("input")
    server.reveal()
    with pytest.raises(IllegalTransition):
        server.reveal()


def test_constructor_validation():
    with pytest.raises(ValueError):
        PlainServer(round=0, clients=[], dim=3)
    with pytest.raises(ValueError):
        PlainServer(round=0, clients=[0], dim=0)
    with pytest.raises(TypeError):
        PlainClient(client_id=0, round=0, update=np.zeros(3), weight=1.0)
    with pytest.raises(ValueError):
        PlainClient(client_id=0, round=0, update=np.zeros(3, np.float32), weight=0.0)
