"""Constructors check every argument (pyca's habit): TypeError for a wrong type, ValueError
(ConfigError for configurations) for a wrong value, and the message names the argument."""

from __future__ import annotations

import numpy as np
import pytest
from enrolment import IDENTITIES, ROSTER, signing_as

from fedshield.errors import ConfigError, NonFiniteValues
from fedshield.protocols.he import HEClient, HEServer
from fedshield.protocols.he.keys import HEKeyring, HEKeySetupClient, HEKeySetupServer
from fedshield.protocols.he.params import HEConfig, plan_for
from fedshield.protocols.plain import PlainClient, PlainFormat, PlainServer
from fedshield.protocols.registry import KeySetup, get_protocol
from fedshield.protocols.secagg import SecAggClient, SecAggConfig, SecAggServer

UPDATE = np.zeros(4, np.float32)
PLAN = plan_for(HEConfig(max_weight=10.0), n_clients=2, dim=4)
SECAGG = SecAggConfig()


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"quant_bits": 8.5}, TypeError, "quant_bits"),
        ({"quant_bits": True}, TypeError, "quant_bits"),
        ({"quant_bits": 17}, ConfigError, "quant_bits"),
        ({"clip": "1"}, TypeError, "clip"),
        ({"clip": 0.0}, ConfigError, "clip"),
        ({"clip": float("nan")}, ConfigError, "clip"),
        ({"weight_bits": 2.0}, TypeError, "weight_bits"),
        ({"weight_bits": 25}, ConfigError, "weight_bits"),
        ({"max_weight": None}, TypeError, "max_weight"),
        ({"max_weight": float("inf")}, ConfigError, "max_weight"),
        ({"threshold": "2"}, TypeError, "threshold"),
        ({"threshold": 0}, ConfigError, "threshold"),
        ({"neighbours": 1.5}, TypeError, "neighbours"),
        ({"neighbours": 0}, ConfigError, "neighbours"),
    ],
)
def test_secagg_config(kwargs, error, name):
    with pytest.raises(error, match=name):
        SecAggConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"scheme": "tfhe"}, ConfigError, "scheme"),
        ({"scheme": 1}, TypeError, "scheme"),
        ({"weighting": "mean"}, ConfigError, "weighting"),
        ({"clip": -1.0}, ConfigError, "clip"),
        ({"clip": "0.1"}, TypeError, "clip"),
        ({"quant_bits": 8.0}, TypeError, "quant_bits"),
        ({"quant_bits": 0}, ConfigError, "quant_bits"),
        ({"weight_bits": 17}, ConfigError, "weight_bits"),
        ({"max_weight": 0}, ConfigError, "max_weight"),
    ],
)
def test_he_config(kwargs, error, name):
    with pytest.raises(error, match=name) as caught:
        HEConfig(**kwargs)
    assert "--" not in str(caught.value)  # library errors name arguments, not CLI flags


def test_he_plan_errors_name_arguments_not_flags():
    with pytest.raises(ConfigError, match="n_clients"):
        plan_for(HEConfig(), n_clients=0, dim=4)
    with pytest.raises(ConfigError, match="dim"):
        plan_for(HEConfig(), n_clients=2, dim=0)
    with pytest.raises(TypeError, match="config"):
        plan_for({"scheme": "bfv"}, n_clients=2, dim=4)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"quant_bits": 4.0}, TypeError, "quant_bits"),
        ({"quant_bits": 0}, ConfigError, "quant_bits"),
        ({"chunk": 0}, ConfigError, "chunk"),
        ({"chunk": "64"}, TypeError, "chunk"),
        ({"k": 0}, ConfigError, "k"),
        ({"k": 2.5}, TypeError, "k"),
    ],
)
def test_plain_format(kwargs, error, name):
    with pytest.raises(error, match=name):
        PlainFormat(**kwargs)


SERVER_CASES = [
    ({"round": -1}, ValueError, "round"),
    ({"round": 2**32}, ValueError, "round"),
    ({"round": 1.0}, TypeError, "round"),
    ({"round": True}, TypeError, "round"),
    ({"clients": []}, ValueError, "clients"),
    ({"clients": [0, 0, 1]}, ValueError, "distinct"),
    ({"clients": [0, "1"]}, TypeError, "clients"),
    ({"clients": 3}, TypeError, "clients"),
    ({"clients": [-1]}, ValueError, "clients"),
    ({"dim": 0}, ValueError, "dim"),
    ({"dim": 4.0}, TypeError, "dim"),
]


@pytest.mark.parametrize(("kwargs", "error", "name"), SERVER_CASES)
@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: PlainServer(**kw),
        lambda **kw: SecAggServer(roster=ROSTER, config=SECAGG, **kw),
        lambda **kw: HEServer(plan=PLAN, **kw),
    ],
    ids=["plain", "secagg", "he"],
)
def test_server_sessions(make, kwargs, error, name):
    with pytest.raises(error, match=name):
        make(**{"round": 0, "clients": [0, 1], "dim": 4, **kwargs})


CLIENT_CASES = [
    ({"client_id": "0"}, TypeError, "client_id"),
    ({"client_id": -1}, ValueError, "client_id"),
    ({"client_id": 2**32 - 1}, ValueError, "client_id"),  # the server's id on the wire
    ({"round": -1}, ValueError, "round"),
    ({"round": None}, TypeError, "round"),
    ({"weight": 0.0}, ValueError, "weight"),
    ({"weight": float("nan")}, ValueError, "weight"),
    ({"weight": "1"}, TypeError, "weight"),
    ({"update": [0.0, 0.0, 0.0, 0.0]}, TypeError, "update"),
    ({"update": np.zeros(4)}, TypeError, "float32"),
    ({"update": np.zeros((2, 2), np.float32)}, ValueError, "update"),
    ({"update": np.zeros(0, np.float32)}, ValueError, "update"),
    ({"quant_seed": 1.5}, TypeError, "quant_seed"),
    ({"quant_seed": -1}, ValueError, "quant_seed"),
]


@pytest.mark.parametrize(("kwargs", "error", "name"), CLIENT_CASES)
@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: PlainClient(**kw),
        lambda **kw: SecAggClient(config=SECAGG, **signing_as(0), **kw),
    ],
    ids=["plain", "secagg"],
)
def test_client_sessions(make, kwargs, error, name):
    with pytest.raises(error, match=name):
        make(**{"client_id": 0, "round": 0, "update": UPDATE, "weight": 1.0, **kwargs})


def test_protocol_specific_session_arguments():
    with pytest.raises(TypeError, match="config"):
        SecAggServer(roster=ROSTER, round=0, clients=[0], dim=4, config={"clip": 0.1})
    with pytest.raises(TypeError, match="config"):
        SecAggClient(client_id=0, **signing_as(0), round=0, update=UPDATE, weight=1.0, config=None)
    with pytest.raises(TypeError, match="payload_format"):
        PlainServer(round=0, clients=[0], dim=4, payload_format="float32")
    with pytest.raises(ValueError, match="indices"):
        PlainClient(client_id=0, round=0, update=UPDATE, weight=1.0, indices=np.arange(4))
    sparse = PlainFormat(k=4)
    with pytest.raises(ValueError, match="indices"):
        PlainClient(
            client_id=0, round=0, update=UPDATE, weight=1.0, payload_format=sparse,
            indices=np.arange(4.0),
        )  # fmt: skip
    with pytest.raises(TypeError, match="plan"):
        HEServer(round=0, clients=[0, 1], dim=4, plan=None)
    with pytest.raises(ValueError, match="plan"):
        HEServer(round=0, clients=[0, 1], dim=5, plan=PLAN)
    with pytest.raises(TypeError, match="workers"):
        HEServer(round=0, clients=[0, 1], dim=4, plan=PLAN, workers=2.0)
    with pytest.raises(TypeError, match="keyring"):
        HEClient(client_id=0, round=0, update=UPDATE, weight=1.0, keyring=PLAN)


def test_he_key_setup_arguments():
    server = {"round": 0, "dim": 1, "plan": PLAN, "roster": ROSTER}
    with pytest.raises(ValueError, match="holder"):
        HEKeySetupServer(clients=[0, 1], holder=2, **server)
    with pytest.raises(TypeError, match="holder"):
        HEKeySetupServer(clients=[0, 1], holder="0", **server)
    with pytest.raises(ValueError, match="roster"):
        HEKeySetupServer(clients=[0, 16], holder=0, **server)
    with pytest.raises(TypeError, match="roster"):
        HEKeySetupServer(clients=[0, 1], holder=0, **{**server, "roster": [0, 1]})
    with pytest.raises(TypeError, match="roster"):
        HEKeySetupServer(round=0, clients=[0, 1], dim=1, plan=PLAN, holder=0)
    with pytest.raises(TypeError, match="plan"):
        HEKeySetupClient(client_id=0, plan=HEConfig(), holder=0, **signing_as(0))
    with pytest.raises(TypeError, match="holder"):
        HEKeySetupClient(client_id=0, plan=PLAN, holder=None, **signing_as(0))
    with pytest.raises(ValueError, match="holder"):
        HEKeySetupClient(client_id=0, plan=PLAN, holder=16, **signing_as(0))
    with pytest.raises(TypeError, match="identity"):
        HEKeySetupClient(client_id=0, plan=PLAN, holder=0, roster=ROSTER)
    with pytest.raises(TypeError, match="identity"):
        HEKeySetupClient(client_id=0, plan=PLAN, holder=0, roster=ROSTER, identity=b"k" * 32)
    with pytest.raises(ValueError, match="identity"):
        HEKeySetupClient(client_id=1, plan=PLAN, holder=0, **signing_as(0))
    with pytest.raises(TypeError, match="roster"):
        HEKeySetupClient(client_id=0, plan=PLAN, holder=0, roster=None, identity=IDENTITIES[0])
    with pytest.raises(TypeError, match="plan"):
        HEKeyring(HEConfig(), None, None)
    spec = get_protocol("he", max_weight=10.0)
    assert KeySetup(spec, PLAN, [0, 1]).clients == [0, 1]
    with pytest.raises(ConfigError, match="enrol"):  # no roster bound: no key setup
        KeySetup(spec, PLAN, [0, 1]).server()
    with pytest.raises(ConfigError, match="enrol"):
        KeySetup(spec, PLAN, [0, 1]).client(0, IDENTITIES[0])
    bound = KeySetup(spec.with_roster(ROSTER), PLAN, [0, 1])
    assert bound.client(1, IDENTITIES[1]).roster is ROSTER
    assert bound.server().roster is ROSTER
    with pytest.raises(TypeError, match="spec"):
        KeySetup(get_protocol("plain"), PLAN, [0, 1])
    with pytest.raises(TypeError, match="plan"):
        KeySetup(spec, None, [0, 1])
    with pytest.raises(ValueError, match="clients"):
        KeySetup(spec, PLAN, [])
    with pytest.raises(ValueError, match="holder"):
        KeySetup(spec, PLAN, [1, 2])


def test_get_protocol_keeps_raising_config_error_for_wrong_values():
    with pytest.raises(ConfigError, match="secagg: quant_bits"):
        get_protocol("secagg", max_weight=1.0, quant_bits=17)
    with pytest.raises(ConfigError, match="plain: quant_bits"):
        get_protocol("plain", quant_bits=0)
    with pytest.raises(ConfigError, match="clip"):
        get_protocol("he", max_weight=1.0, clip=-1.0)


def test_a_client_session_refuses_a_non_finite_update():
    config = SecAggConfig(clip=0.1, max_weight=1.0)
    update = np.array([np.nan, 0.1, 0.1], dtype=np.float32)
    with pytest.raises(NonFiniteValues, match="NaN or infinity"):
        SecAggClient(
            client_id=0, **signing_as(0), round=1, update=update, weight=1.0, config=config
        )
