"""Every legal and illegal (stage, next stage) pair of every protocol, on the real sessions
(as Flower's ``test_stage_transition`` does): servers, clients, receive, close and reveal."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from enrolment import ROSTER, signing_as

from fedshield.errors import IllegalTransition, InvalidShare, SecAggAbort, StageNotClosed
from fedshield.protocols.base import ClientSession, ServerSession, broadcasts, handles, receives
from fedshield.protocols.he import HEClient, HEServer
from fedshield.protocols.he.common import HEKeyStage, HEStage
from fedshield.protocols.he.keys import HEKeyring, HEKeySetupClient, HEKeySetupServer
from fedshield.protocols.he.params import HEConfig, plan_for
from fedshield.protocols.plain import PlainClient, PlainServer, PlainStage
from fedshield.protocols.secagg import SecAggClient, SecAggConfig, SecAggServer, SecAggStage

CLIENTS = [0, 1, 2]
ME = 2  # the client under test: never he's key holder
DIM = 8


def _updates():
    rng = np.random.default_rng(0)
    return {c: rng.uniform(-0.5, 0.5, DIM).astype(np.float32) for c in CLIENTS}


def _plain():
    updates = _updates()
    server = PlainServer(round=0, clients=CLIENTS, dim=DIM)
    clients = {c: PlainClient(client_id=c, round=0, update=updates[c], weight=1.0) for c in CLIENTS}
    return server, clients


def _secagg():
    config = SecAggConfig(clip=1.0, quant_bits=8, weight_bits=4, max_weight=15.0)
    updates = _updates()
    server = SecAggServer(roster=ROSTER, round=0, clients=CLIENTS, dim=DIM, config=config)
    clients = {
        c: SecAggClient(
            client_id=c, **signing_as(c), round=0, update=updates[c], weight=3.0, config=config
        )
        for c in CLIENTS
    }
    return server, clients


_HE_PLAN = plan_for(HEConfig(clip=0.5, max_weight=10.0), n_clients=len(CLIENTS), dim=DIM)


def _he():
    keyring = HEKeyring.generate(_HE_PLAN)
    updates = _updates()
    server = HEServer(round=1, clients=CLIENTS, dim=DIM, plan=_HE_PLAN)
    clients = {
        c: HEClient(client_id=c, round=1, update=updates[c], weight=5.0, keyring=keyring)
        for c in CLIENTS
    }
    return server, clients


def _he_keys():
    server = HEKeySetupServer(
        round=0, clients=CLIENTS, dim=1, plan=_HE_PLAN, holder=0, roster=ROSTER
    )
    clients = {
        c: HEKeySetupClient(client_id=c, plan=_HE_PLAN, holder=0, **signing_as(c)) for c in CLIENTS
    }
    return server, clients


PROTOCOLS = {
    "plain": (_plain, PlainStage),
    "secagg": (_secagg, SecAggStage),
    "he": (_he, HEStage),
    "he-keys": (_he_keys, HEKeyStage),
}
# (protocol, index of the last stage done or -1, index of the stage tried next)
PAIRS = [
    (name, done, nxt)
    for name, (_, stages) in PROTOCOLS.items()
    for done, nxt in itertools.product(range(-1, len(stages)), range(len(stages)))
]


def _run_stage(server, clients, stage, *, skip=()) -> set[int]:
    """One stage, honestly, for every addressed client not in ``skip``; returns who handled it."""
    handled = set()
    for c, message in server.broadcast(stage).items():
        if c not in skip:
            server.receive(stage, c, clients[c].handle(stage, message))
            handled.add(c)
    server.close_stage(stage)
    return handled


def _sessions_after(name, done):
    """Sessions with stages ``0..done`` run; the last of them that :data:`ME` handled."""
    make, stages = PROTOCOLS[name]
    server, clients = make()
    me_done = -1
    for i, stage in enumerate(list(stages)[: done + 1]):
        if ME in _run_stage(server, clients, stage):
            me_done = i
    return server, clients, list(stages), me_done


def test_the_stage_enums_are_the_wire_strings_in_order():
    assert list(SecAggStage) == [
        "advertise_keys", "share_keys", "masked_input", "consistency", "unmask", "expel",
    ]  # fmt: skip
    assert list(HEStage) == ["input", "aggregate"]
    assert list(HEKeyStage) == ["advertise", "seal", "install"]
    assert list(PlainStage) == ["input"]
    for name, (make, stages) in PROTOCOLS.items():
        server, clients = make()
        assert server.stages == tuple(stages) == clients[ME].stages, name


@pytest.mark.parametrize(("name", "done", "nxt"), PAIRS)
def test_server_opens_only_the_next_stage_after_the_last_is_closed(name, done, nxt):
    server, _, stages, _ = _sessions_after(name, done)
    if nxt == done + 1:
        assert set(server.broadcast(stages[nxt])) <= set(CLIENTS)
    else:
        with pytest.raises(IllegalTransition):
            server.broadcast(stages[nxt])


@pytest.mark.parametrize(("name", "done", "nxt"), PAIRS)
def test_no_stage_opens_while_the_current_one_is_open(name, done, nxt):
    server, _, stages, _ = _sessions_after(name, done)
    if done + 1 >= len(stages):
        return  # nothing left to open
    server.broadcast(stages[done + 1])  # open, not closed
    error = StageNotClosed if nxt == done + 2 else IllegalTransition
    with pytest.raises(error):
        server.broadcast(stages[nxt])


@pytest.mark.parametrize(("name", "done", "nxt"), PAIRS)
def test_receive_and_close_take_only_the_open_stage(name, done, nxt):
    server, _, stages, _ = _sessions_after(name, done)
    # After a closed stage (or before any), nothing is open.
    with pytest.raises(IllegalTransition):
        server.receive(stages[nxt], ME, b"")
    with pytest.raises(IllegalTransition):
        server.close_stage(stages[nxt])
    if done + 1 < len(stages):
        server.broadcast(stages[done + 1])
        if nxt != done + 1:
            with pytest.raises(IllegalTransition):
                server.receive(stages[nxt], ME, b"")
            with pytest.raises(IllegalTransition):
                server.close_stage(stages[nxt])


def _client_may_skip_to(client: ClientSession, stages, done: int, nxt: int) -> bool:
    """The rule: the next stage, or a later one when every stage in between is skippable."""
    return nxt > done and all(s in client.skippable for s in stages[done + 1 : nxt])


@pytest.mark.parametrize(("name", "done", "nxt"), PAIRS)
def test_client_handles_only_the_next_stage(name, done, nxt):
    server, clients, stages, me_done = _sessions_after(name, done)
    me = clients[ME]
    if not _client_may_skip_to(me, stages, me_done, nxt):
        with pytest.raises(IllegalTransition):
            me.handle(stages[nxt], b"")
        return
    if nxt <= done:  # the server is past that stage; the client may still take it
        return
    for stage in stages[done + 1 : nxt]:  # stages that pass this client by
        _run_stage(server, clients, stage, skip={ME})
    addressed = server.broadcast(stages[nxt])
    if ME in addressed:
        assert isinstance(me.handle(stages[nxt], addressed[ME]), bytes)
    elif not addressed:  # secagg's expel in a round without a cheater: nobody is asked
        assert (name, stages[nxt]) == ("secagg", "expel")
    else:  # a stage for others only (he's seal, for the key holder): in order, but refused
        with pytest.raises(InvalidShare, match="only the key holder"):
            me.handle(stages[nxt], next(iter(addressed.values())))


def test_only_he_key_setup_and_secagg_expel_let_a_site_skip_a_stage():
    assert HEKeySetupClient.skippable == {"seal"}
    assert SecAggClient.skippable == {"expel"}
    for cls in (PlainClient, HEClient):
        assert not cls.skippable


def test_server_broadcast_twice_raises():
    server, _ = _secagg()
    server.broadcast("advertise_keys")
    with pytest.raises(IllegalTransition, match="cannot open stage 'advertise_keys'"):
        server.broadcast("advertise_keys")


def test_second_stage_before_the_first_is_closed_raises_stage_not_closed():
    server, clients = _secagg()
    for c, message in server.broadcast("advertise_keys").items():
        server.receive("advertise_keys", c, clients[c].handle("advertise_keys", message))
    with pytest.raises(StageNotClosed, match="close stage 'advertise_keys' first"):
        server.broadcast("share_keys")
    server.close_stage("advertise_keys")
    assert set(server.broadcast("share_keys")) == set(CLIENTS)


def test_close_twice_and_reveal_before_close_raise():
    server, clients = _plain()
    for c, message in server.broadcast("input").items():
        server.receive("input", c, clients[c].handle("input", message))
    with pytest.raises(StageNotClosed):
        server.reveal()
    server.close_stage("input")
    with pytest.raises(IllegalTransition, match="not open"):
        server.close_stage("input")
    assert server.reveal().contributors == tuple(CLIENTS)
    with pytest.raises(IllegalTransition, match="over"):
        server.reveal()


def test_client_handling_a_stage_out_of_order_raises():
    server, clients = _secagg()
    message = server.broadcast("advertise_keys")[0]
    with pytest.raises(IllegalTransition, match="cannot handle stage 'masked_input'"):
        clients[0].handle("masked_input", message)
    clients[0].handle("advertise_keys", message)
    with pytest.raises(IllegalTransition):
        clients[0].handle("advertise_keys", message)
    with pytest.raises(IllegalTransition):
        clients[0].handle("no_such_stage", message)


def test_an_aborted_round_refuses_every_later_step():
    server, clients = _secagg()
    message = server.broadcast("advertise_keys")[0]
    server.receive("advertise_keys", 0, clients[0].handle("advertise_keys", message))
    with pytest.raises(SecAggAbort):
        server.close_stage("advertise_keys")  # one answer: below the threshold of 2
    for step in (lambda: server.broadcast("share_keys"), server.reveal):
        with pytest.raises(IllegalTransition, match="aborted"):
            step()


def test_a_session_missing_a_handler_fails_when_its_class_is_made():
    with pytest.raises(TypeError, match="receive 'input'"):

        class _NoReceive(ServerSession):
            protocol_id = 1
            stages = tuple(PlainStage)

            @broadcasts(PlainStage.INPUT)
            def _ask(self, stage):
                return {}

            def _reveal(self):
                raise NotImplementedError

            def _max_message_bytes(self, stage):
                return 0

    with pytest.raises(TypeError, match="handle 'aggregate'"):

        class _MissesAStage(ClientSession):
            protocol_id = 3
            stages = tuple(HEStage)

            @handles(HEStage.INPUT)
            def _input(self, stage, message):
                return b""

    with pytest.raises(TypeError, match="unmask"):

        class _UnknownStage(ClientSession):
            protocol_id = 1
            stages = tuple(PlainStage)

            @handles(PlainStage.INPUT)
            def _input(self, stage, message):
                return b""

            @receives("unmask")
            def _stray(self, stage, sender, message):
                return None
