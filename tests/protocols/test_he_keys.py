"""``he``'s key distribution as an auditor checks it: a server that holds nothing that
decrypts, and sealed key transport that only the addressed site opens (a malicious server's
attempts: ``test_he_key_attacks.py``)."""

import gc
from typing import ClassVar

import numpy as np
import pytest
import tenseal.sealapi as sa
from enrolment import ROSTER, signing_as

from fedshield import wire
from fedshield.crypto.keys import KeyPair, open_share
from fedshield.engine.runner import run_protocol
from fedshield.engine.transport import InProcessTransport
from fedshield.errors import InvalidShare
from fedshield.protocols.he import HEClient, HEServer, pack_slots
from fedshield.protocols.he.keys import (
    HEKeyring,
    HEKeySetupClient,
    HEKeySetupServer,
    _transport_info,
)
from fedshield.protocols.he.params import HEConfig, plan_for

CONFIG = HEConfig(clip=0.5, quant_bits=8, weight_bits=8, max_weight=100.0)


# --- what the server holds ----------------------------------------------------------------
def _holds_a_secret(obj, seen=None) -> bool:
    """Whether anything reachable from ``obj``'s attributes is a secret key or a keyring."""
    seen = seen if seen is not None else set()
    if id(obj) in seen:
        return False
    seen.add(id(obj))
    if isinstance(obj, (sa.SecretKey, sa.Decryptor, sa.Encryptor, HEKeyring, KeyPair)):
        return True
    if isinstance(obj, dict):
        return any(_holds_a_secret(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple, set)):
        return any(_holds_a_secret(v, seen) for v in obj)
    if hasattr(obj, "__dict__"):
        return any(_holds_a_secret(v, seen) for v in vars(obj).values())
    return False


class _Recorder(InProcessTransport):
    relayed: ClassVar[list] = []

    def exchange(self, stage, messages):
        replies = super().exchange(stage, messages)
        type(self).relayed.append((stage, dict(messages), {c: r.data for c, r in replies.items()}))
        return replies


def _distributed(plan):
    """Key distribution among three sites (site 0 holds the key), every message recorded."""
    setup_server = HEKeySetupServer(
        round=0, clients=[0, 1, 2], dim=1, plan=plan, holder=0, roster=ROSTER
    )
    sites = {
        c: HEKeySetupClient(client_id=c, plan=plan, holder=0, **signing_as(c)) for c in range(3)
    }
    _Recorder.relayed = []
    run_protocol(setup_server, _Recorder(sites))
    return setup_server, sites


def test_the_server_never_holds_anything_that_decrypts():
    plan = plan_for(CONFIG, n_clients=3, dim=5000)
    setup_server, sites = _distributed(plan)
    assert not _holds_a_secret(setup_server)
    rng = np.random.default_rng(3)
    updates = {c: rng.uniform(-0.5, 0.5, plan.dim).astype(np.float32) for c in range(3)}
    server = HEServer(round=1, clients=[0, 1, 2], dim=plan.dim, plan=plan)
    clients = {
        c: HEClient(client_id=c, round=1, update=updates[c], weight=50.0, keyring=sites[c].keyring)
        for c in range(3)
    }
    for c, request in server.broadcast("input").items():
        server.receive("input", c, clients[c].handle("input", request))
    server.close_stage("input")
    (part,) = server.parts  # a small update: summed in this process
    assert not _holds_a_secret(server) and part.target.total is not None
    # The only decryptor one can build from the server's context uses some other key: the
    # sum then decrypts to noise, not to the aggregate.
    context = part.target.io.context
    outsider = sa.Decryptor(context, sa.KeyGenerator(context).secret_key())
    plaintext = sa.Plaintext()
    outsider.decrypt(part.target.total[0], plaintext)
    guess = np.array(sa.BatchEncoder(context).decode_uint64(plaintext), np.uint64)
    for c, request in server.broadcast("aggregate").items():
        server.receive("aggregate", c, clients[c].handle("aggregate", request))
    truth = pack_slots(clients[0].level_sum, plan)[0]
    assert np.mean(guess == truth) < 0.01
    assert not server.parts  # the sum is gone once it was sent
    gc.collect()


def test_key_transport_messages_are_aead_ciphertexts_only_the_addressed_site_opens():
    plan = plan_for(CONFIG, n_clients=3, dim=100)
    _, sites = _distributed(plan)
    secret = sites[0].keyring.secret_bytes()
    assert sites[1].keyring.secret_bytes() == secret == sites[2].keyring.secret_bytes()
    everything = b"".join(
        data for _stage, down, up in _Recorder.relayed for data in [*down.values(), *up.values()]
    )
    assert secret[32:96] not in everything  # the key never crosses in the clear
    (install,) = [down for stage, down, _ in _Recorder.relayed if stage == "install"]
    sealed_for_1 = wire.parse(install[1]).raw(2)
    holder_public = wire.parse(install[1]).raw(0)
    for wrong_site in (2, 0):
        key = sites[wrong_site].transport_keys.agree(
            holder_public, info=_transport_info(plan.params_id, 0, wrong_site)
        )
        with pytest.raises(InvalidShare):
            open_share(key, sealed_for_1, round=0, sender=0, receiver=wrong_site)
