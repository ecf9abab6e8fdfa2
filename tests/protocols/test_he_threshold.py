"""Threshold ``he`` as an auditor checks it: the same aggregate as shared-key ``he`` and as
the plain sum of the quantized levels, one collective key at every site and none on the
server, n-of-n dropouts, and malformed input refused with a typed error."""

import gc

import numpy as np
import pytest
from threshold_federation import CONFIG, DIM, drive, federation, round_sessions, updates

from fedshield import wire
from fedshield.audit.keywalk import reachable_secrets
from fedshield.engine.runner import run_protocol
from fedshield.engine.transport import InProcessTransport
from fedshield.errors import ConfigError, InvalidMessage, ProtocolAbort, WrongShape
from fedshield.protocols.he import HEClient, HEServer
from fedshield.protocols.he.keys import HEKeyring
from fedshield.protocols.he.params import HEConfig, plan_for


def _run(server, clients):
    return run_protocol(server, InProcessTransport(clients))


def test_the_aggregate_equals_shared_key_he_and_the_plain_sum_of_levels():
    server, clients = round_sessions(3)
    outcome = _run(server, clients)
    assert outcome.aborted is None and outcome.revealed.contributors == (0, 1, 2)
    shared_config = HEConfig(clip=0.5, quant_bits=8, weight_bits=8, max_weight=100.0)
    plan = plan_for(shared_config, n_clients=3, dim=DIM)
    keyring = HEKeyring.generate(plan)
    shared = {
        c: HEClient(client_id=c, round=1, update=u, weight=10.0 * (c + 1), keyring=keyring,
                    quant_seed=100 + c)
        for c, u in enumerate(updates(3))
    }  # fmt: skip
    assert _run(HEServer(round=1, clients=[0, 1, 2], dim=DIM, plan=plan), shared).aborted is None
    for c in range(3):  # every site decodes the same sum, bit for bit the shared-key one
        assert np.array_equal(clients[c].aggregate[0], shared[0].aggregate[0])
        assert clients[c].aggregate[1] == shared[0].aggregate[1]
        assert np.array_equal(clients[c].level_sum, shared[0].level_sum)
    mean = clients[0].aggregate[0] / clients[0].aggregate[1]
    weights = np.array([10.0, 20.0, 30.0])
    plain = (np.stack(updates(3)) * weights[:, None]).sum(0) / weights.sum()
    # fraction weighting's documented bound: n steps times (2^8 - 1) over the integer weights
    integer = np.round(weights / 100.0 * 255)
    assert np.abs(mean - plain).max() <= 3 * (1.0 / 255) * 255 / integer.sum()


def test_every_site_holds_the_same_collective_key_and_the_server_none():
    _plan, _, _, keyrings = federation(3)
    keys = {kr.keys.public_key_bytes() for kr in keyrings.values()}
    assert len(keys) == 1
    secrets = {bytes(kr.io.dump(kr.keys.secret_key)) for kr in keyrings.values()}
    assert len(secrets) == 3  # three different shares
    server, clients = round_sessions(3)
    _run(server, clients)
    gc.collect()
    secrets, _ = reachable_secrets(server)  # the audit's walk, more thorough than attributes
    assert not secrets, secrets


@pytest.mark.parametrize("stage", ["input", "digest", "decrypt"])
def test_n_of_n_a_site_missing_at_any_stage_aborts_the_round(stage):
    server, clients = round_sessions(3, round={"input": 2, "digest": 6, "decrypt": 7}[stage])
    outcome = run_protocol(server, _Dropping(clients, {stage: 2}))
    assert outcome.revealed is None
    assert ("needs 3" if stage == "input" else "[2] missing") in outcome.aborted


class _Dropping(InProcessTransport):
    """Drops the named site's answer at the named stage."""

    def __init__(self, sessions, drops: dict):
        super().__init__(sessions)
        self.drops = drops

    def exchange(self, stage, messages):
        replies = super().exchange(stage, messages)
        if stage in self.drops:
            replies.pop(self.drops[stage], None)
        return replies


def test_t_of_n_a_site_missing_at_input_is_left_out_and_the_others_decrypt():
    """Four sites, threshold 3: site 3 never sends its ciphertexts; sites 0-2 decrypt their
    own sum with their Shamir shares, the same sum as shared-key he over those three."""
    server, clients = round_sessions(4, round=8, threshold=3)
    outcome = run_protocol(server, _Dropping(clients, {"input": 3}))
    assert outcome.aborted is None and outcome.revealed.contributors == (0, 1, 2)
    assert outcome.revealed.dropped == (3,)
    plan = plan_for(HEConfig(clip=0.5, quant_bits=8, weight_bits=8, max_weight=100.0),
                    n_clients=4, dim=DIM)  # fmt: skip
    keyring = HEKeyring.generate(plan)
    shared = {c: HEClient(client_id=c, round=8, update=u, weight=10.0 * (c + 1), keyring=keyring,
                          quant_seed=100 + c) for c, u in enumerate(updates(4))}  # fmt: skip
    reference = run_protocol(HEServer(round=8, clients=[0, 1, 2, 3], dim=DIM, plan=plan),
                             _Dropping(shared, {"input": 3}))  # fmt: skip
    assert reference.aborted is None
    for c in range(3):
        assert clients[c].aggregate[1] == shared[0].aggregate[1]
        assert np.array_equal(clients[c].aggregate[0], shared[0].aggregate[0])


def test_t_of_n_fewer_than_t_contributors_or_a_dropout_after_the_sum_aborts():
    server, clients = round_sessions(4, round=9, threshold=3)
    two_drop = _Dropping(clients, {"input": 3})
    two_drop.exchange = _drop_two(two_drop.exchange)
    assert "needs 3" in run_protocol(server, two_drop).aborted
    server, clients = round_sessions(4, round=10, threshold=3)
    outcome = run_protocol(server, _Dropping(clients, {"decrypt": 1}))
    assert outcome.revealed is None and "[1] missing at decrypt" in outcome.aborted


def _drop_two(exchange):
    def dropping(stage, messages):
        replies = exchange(stage, messages)
        if stage == "input":
            replies.pop(2, None)
        return replies

    return dropping


def test_threshold_keys_refuse_ckks_and_too_many_sites():
    with pytest.raises(ConfigError, match="BFV"):
        HEConfig(scheme="ckks", keys="threshold")
    with pytest.raises(ConfigError, match="at most 128"):
        plan_for(CONFIG, n_clients=129, dim=10)
    with pytest.raises(ConfigError, match="keys"):
        HEConfig(keys="split")


def test_the_cli_refuses_threshold_keys_with_dropouts():
    from fedshield.engine.experiment import RunConfig

    with pytest.raises(ConfigError, match="n-of-n"):
        RunConfig(protect="he", he_keys="threshold", dropout=0.1)
    RunConfig(protect="he", he_keys="threshold", threshold=3, sites=4, dropout=0.1)  # t-of-n
    with pytest.raises(ConfigError, match="threshold keys"):
        HEConfig(threshold=2)  # a threshold means nothing for one shared key
    with pytest.raises(ConfigError, match="exceeds"):
        plan_for(HEConfig(keys="threshold", threshold=5), n_clients=4, dim=10)


def test_a_truncated_or_unreduced_ciphertext_is_a_typed_error_and_the_round_aborts():
    server, clients = round_sessions(3, round=3)
    messages = server.broadcast("input")
    answers = {c: clients[c].handle("input", m) for c, m in messages.items()}
    with pytest.raises(InvalidMessage):
        server.receive("input", 1, answers[1][:-100])
    high = wire.parse(answers[2])
    with pytest.raises(WrongShape, match="not reduced"):  # every coefficient 2^60 - 1 > q
        server.receive("input", 2, _as(high, b"\xff" * len(high.fields[0])))
    server.receive("input", 0, answers[0])
    with pytest.raises(ProtocolAbort, match="needs 3"):
        server.close_stage("input")


def _as(message, payload: bytes) -> bytes:
    return wire.serialize(message.header, [payload])


def test_a_digest_replayed_from_another_round_is_refused():
    old_server, old_clients = round_sessions(3, round=4)
    drive(old_server, old_clients, "digest")
    old_answer = old_clients[0].handle("digest", old_server.broadcast("digest")[0])
    server, clients = round_sessions(3, round=5)
    drive(server, clients, "digest")
    server.broadcast("digest")
    with pytest.raises(InvalidMessage):
        server.receive("digest", 0, old_answer)  # round 4's header (and signature)
