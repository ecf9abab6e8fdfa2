"""SecAgg+ against a server that deviates, as it would drive the real client sessions: it
tells different clients different survivor sets to get both of a victim's secrets (with one
colluding client), swaps a client's key for its own, plays members it invented, shrinks a
round, and forges or withholds consistency signatures. Each attack is shown to work where
the defence is sized down (or absent), and to fail with the defaults."""

import numpy as np
import pytest
from enrolment import IDENTITIES, ROSTER
from test_secagg_complaints import low_order_receive_key_for

from fedshield import wire
from fedshield.crypto import merkle, ring, shamir
from fedshield.crypto.keys import KeyPair
from fedshield.crypto.prg import add_mask, mask_scratch, ring_dtype
from fedshield.engine.runner import run_protocol
from fedshield.engine.transport import InProcessTransport
from fedshield.errors import BadSignature, IllegalTransition, SecAggAbort
from fedshield.protocols.roster import Roster
from fedshield.protocols.secagg import SecAggClient, SecAggServer
from fedshield.protocols.secagg.channels import receive_leaves
from fedshield.protocols.secagg.common import (
    ADVERTISE_LABEL,
    CONSISTENCY_LABEL,
    add_pairwise_mask,
    advertisement,
    survivor_statement,
)
from fedshield.protocols.secagg.config import SecAggConfig

D, ROUND = 24, 1
VICTIM, COLLUDER = 4, 0


def _sessions(n, config, roster=ROSTER, identities=IDENTITIES):
    rng = np.random.default_rng(3)
    server = SecAggServer(roster=roster, round=ROUND, clients=range(n), dim=D, config=config)
    clients = {
        c: SecAggClient(client_id=c, round=ROUND, update=rng.uniform(-0.1, 0.1, D).astype(
            np.float32), weight=10.0, config=config, quant_seed=c, roster=roster,
            identity=identities[c])
        for c in range(n)
    }  # fmt: skip
    return server, clients


def _drive(server, clients, stages):
    for stage in stages:
        for c, message in server.broadcast(stage).items():
            server.receive(stage, c, clients[c].handle(stage, message))
        server.close_stage(stage)


def _split_view_attack(config):
    """Five clients all send their masked input. The server tells the victim and client 1
    the victim survived (they reveal seed shares of its self mask) and clients 2 and 3 that
    it dropped (they reveal shares of its mask key); the colluder signs both survivor sets
    and hands over its own shares. Returns the victim's unmasked ring vector, or ``None``
    when the honest clients refuse."""
    server, clients = _sessions(5, config)
    _drive(server, clients, ["advertise_keys", "share_keys", "masked_input"])
    everyone, without_victim = set(range(5)), set(range(5)) - {VICTIM}
    views = {VICTIM: everyone, 1: everyone, 2: without_victim, 3: without_victim}
    signatures = {frozenset(s): {} for s in views.values()}
    for c, view in views.items():  # the consistency stage, a different set per group
        ask = server._server_message("consistency", [np.array(sorted(view), np.uint32)])
        signatures[frozenset(view)][c] = wire.parse(clients[c].handle("consistency", ask)).raw(0)
    for view, signed in signatures.items():  # the colluder signs anything
        statement = survivor_statement(ROUND, server.run_binding, view)
        signed[COLLUDER] = ROSTER.sign(IDENTITIES[COLLUDER], CONSISTENCY_LABEL, statement)
    colluder_seed, colluder_key = clients[COLLUDER].held_shares[VICTIM]
    seed_shares, key_shares = [colluder_seed], [colluder_key]
    for c, view in views.items():
        signed = signatures[frozenset(view)]
        signers = sorted(signed)
        ask = server._server_message(
            "unmask", [np.array(signers, np.uint32), b"".join(signed[s] for s in signers)]
        )
        try:
            reply = wire.parse(clients[c].handle("unmask", ask))
        except SecAggAbort:
            return None
        for owners_field, found in ((0, seed_shares), (2, key_shares)):
            owners = reply.array(owners_field, dtype="<u4").tolist()
            blob = reply.raw(owners_field + 1)
            for i, owner in enumerate(owners):
                if owner == VICTIM:
                    size = shamir.SHARE_BYTES
                    found.append(shamir.Share.from_bytes(blob[i * size : (i + 1) * size]))
    return _unmask_alone(server, clients, seed_shares, key_shares)


def _unmask_alone(server, clients, seed_shares, key_shares):
    """The victim's own input: its masked vector minus its self mask and pairwise masks."""
    self_seed = shamir.reconstruct(seed_shares)
    mask_keys = KeyPair.from_private_bytes(shamir.reconstruct(key_shares))
    vector = ring.unpack(server.masked[VICTIM], server.length, server.bits)
    scratch = mask_scratch(server.length, server.bits)
    add_mask(vector, self_seed, subtract=True, scratch=scratch)
    for peer in range(5):
        if peer != VICTIM:
            add_pairwise_mask(vector, mask_keys, server.mask_public_keys[peer], round=ROUND,
                              me=VICTIM, peer=peer, params=server.params, scratch=scratch,
                              undo=True)  # fmt: skip
    vector &= vector.dtype.type((1 << server.bits) - 1)
    return vector


def test_a_split_survivor_view_with_one_colluder_reveals_nothing():
    """The issue's "reveal both": with a quorum sized for no colluders (the paper's plain
    ``t`` signatures) the attack rebuilds the victim's exact input; with the default quorum
    (``t - 1`` colluders: 4 of 5 must sign one set) the honest clients refuse to unmask."""
    weak = SecAggConfig(clip=0.1, quant_bits=8, max_weight=10.0, colluders=0)
    assert weak.quorum(5) == weak.threshold_for(5) == 3
    stolen = _split_view_attack(weak)
    server, clients = _sessions(5, weak)  # the victim's input, recomputed (same seeds)
    expected = np.empty(server.length, dtype=ring_dtype(server.bits))
    clients[VICTIM]._weighted_levels(expected)
    np.testing.assert_array_equal(stolen[:D], expected[:D])  # the attack works there

    default = SecAggConfig(clip=0.1, quant_bits=8, max_weight=10.0)
    assert default.quorum(5) == 4
    assert _split_view_attack(default) is None


def test_a_server_swapping_a_clients_key_for_its_own_is_refused():
    """A man in the middle: the server relays its own mask key as client 2's. Every client
    checks client 2's signature on its keys, refuses the round, and nothing is revealed."""

    class SwapKey(InProcessTransport):
        def exchange(self, stage, messages):
            if stage == "share_keys":
                forged = {}
                for c, data in messages.items():
                    message = wire.parse(data)
                    ids, channel, mask, *rest = message.fields
                    mask = mask[:64] + KeyPair.generate().public_bytes + mask[96:]
                    forged[c] = wire.serialize(message.header, [ids, channel, mask, *rest])
                messages = forged
            return super().exchange(stage, messages)

    server, clients = _sessions(4, SecAggConfig(clip=0.1, quant_bits=8, max_weight=10.0))
    outcome = run_protocol(server, SwapKey(clients))
    assert outcome.revealed is None
    rejected = outcome.stages[1].rejected
    assert "not this client's" in rejected.pop(2)  # client 2 sees its own key replaced
    assert all("site 2: the signature does not verify" in why for why in rejected.values())
    with pytest.raises(BadSignature):
        ROSTER.verify(2, b"\0" * 64, CONSISTENCY_LABEL, b"anything")


def test_a_server_cannot_play_members_it_invented_or_shrink_the_round():
    """Ids outside the roster are refused at once; a roster id the server plays with keys
    of its own has no valid signature; and the roster's ``min_sites`` pins the round size
    even where the config does not."""
    config = SecAggConfig(clip=0.1, quant_bits=8, max_weight=10.0)
    _, clients = _sessions(3, config)
    header = wire.Header(2, 1, ROUND, wire.SERVER_ID)
    with_stranger = wire.serialize(header, [clients[0].params, np.array([0, 1, 99], np.uint32)])
    with pytest.raises(SecAggAbort, match="non-members"):
        clients[0].handle("advertise_keys", with_stranger)

    roster, identities = Roster.enrol(range(5), min_sites=3)
    alone = SecAggServer(roster=roster, round=ROUND, clients=[2], dim=D, config=config)
    _, victims = _sessions(3, config, roster, identities)
    outcome = run_protocol(alone, InProcessTransport({2: victims[2]}))
    assert outcome.revealed is None and "pinned minimum of 3" in outcome.stages[0].rejected[2]


def _at_unmask(config):
    server, clients = _sessions(5, config)
    _drive(server, clients, ["advertise_keys", "share_keys", "masked_input", "consistency"])
    return server, clients


def _unmask_request(server, signatures):
    signers = sorted(signatures)
    blob = b"".join(signatures[s] for s in signers)
    return server._server_message("unmask", [np.array(signers, np.uint32), blob])


@pytest.mark.parametrize("case", ["too few", "another set", "a stranger"])
def test_unmask_needs_a_quorum_of_valid_signatures_on_the_clients_own_set(case):
    """Too few signatures, one on another survivor set, or one from outside the survivors:
    the client reveals no share, and stays refused (the server cannot try again)."""
    config = SecAggConfig(clip=0.1, quant_bits=8, max_weight=10.0)
    server, clients = _at_unmask(config)
    signed = dict(server.consistency_signatures)
    if case == "too few":
        signed = {c: signed[c] for c in (0, 1, 2)}
    elif case == "another set":
        other = survivor_statement(ROUND, server.run_binding, {0, 1, 2, 3})
        signed[3] = ROSTER.sign(IDENTITIES[3], CONSISTENCY_LABEL, other)
    else:
        signed[9] = ROSTER.sign(IDENTITIES[9], CONSISTENCY_LABEL, b"")
    why = {"too few": "quorum is 4", "another set": "does not verify", "a stranger": "outside"}
    with pytest.raises(SecAggAbort, match=why[case]):
        clients[4].handle("unmask", _unmask_request(server, signed))
    with pytest.raises(IllegalTransition):
        clients[4].handle("unmask", _unmask_request(server, server.consistency_signatures))


def test_an_honest_unmask_request_reveals_seed_shares_only():
    server, clients = _at_unmask(SecAggConfig(clip=0.1, quant_bits=8, max_weight=10.0))
    reply = wire.parse(
        clients[4].handle("unmask", _unmask_request(server, server.consistency_signatures))
    )
    assert reply.array(0, dtype="<u4").tolist() == [0, 1, 2, 3, 4]  # every survivor's seed
    assert reply.array(2, dtype="<u4").tolist() == []  # no mask key: nobody dropped


def test_clients_shown_different_lists_accept_none_of_each_others_keys():
    """Reviewer's attack: two 5-client views of a 6-site roster gave each group its own n,
    threshold and quorum, and two colluders completed both quorums. The listed clients are
    bound into every signature, so a key signed over another list does not verify."""
    config = SecAggConfig(clip=0.1, quant_bits=8, max_weight=10.0)
    _, clients = _sessions(6, config)
    header = wire.Header(2, 1, ROUND, wire.SERVER_ID)
    params = clients[0].params
    views = {0: [0, 1, 2, 4, 5], 2: [0, 2, 3, 4, 5]}
    answers = {
        c: wire.parse(clients[c].handle("advertise_keys", wire.serialize(
            header, [params, np.array(view, np.uint32)])))
        for c, view in views.items()
    }  # fmt: skip
    root = merkle.root(receive_leaves(views[2], answers[2].chunks(3, size=32, count=5)))
    statement = advertisement(ROUND, clients[0].session, 2, answers[2].raw(0), answers[2].raw(1),
                              root)  # fmt: skip
    with pytest.raises(BadSignature):  # client 2's keys, as client 0 would check them
        ROSTER.verify(2, answers[2].raw(2), ADVERTISE_LABEL, statement)
    assert clients[0].session != clients[2].session


def test_a_consistency_signature_from_another_run_of_the_round_does_not_verify():
    """Reviewer's attack: the same round number run twice let the server replay the first
    run's signatures on a survivor set. The graph seed, derived from each run's fresh keys,
    is in the statement."""
    config = SecAggConfig(clip=0.1, quant_bits=8, max_weight=10.0)
    first, _ = _at_unmask(config)
    second, clients = _at_unmask(config)
    replayed = dict(second.consistency_signatures)
    replayed[1] = first.consistency_signatures[1]
    with pytest.raises(SecAggAbort, match="does not verify"):
        clients[4].handle("unmask", _unmask_request(second, replayed))


def test_a_client_signing_a_low_order_receive_key_is_dropped_not_its_victim():
    """Reviewer's attack: the honest sender failed to seal to that key and was dropped. The
    server now checks every receive key it relays and drops the client that made it."""
    config = SecAggConfig(clip=0.1, quant_bits=8, max_weight=10.0)
    server, clients = _sessions(6, config)
    clients[5].__class__ = low_order_receive_key_for(1)
    outcome = run_protocol(server, InProcessTransport(clients))
    assert outcome.revealed is not None and outcome.revealed.contributors == (0, 1, 2, 3, 4)


def test_a_blob_signed_in_another_run_of_the_round_earns_no_receive_key():
    """Reviewer's attack: the victim's signed blob from a first run of the round, relayed in
    a second run, did not open but its signature verified, so every holder revealed its
    receive key, which opened the victim's real blob: the server unmasked the victim. The
    blob statement now carries the graph seed of the run: the old blob counts as unsigned
    and the holder reveals nothing."""
    config = SecAggConfig(clip=0.1, quant_bits=8, max_weight=10.0)
    first, _ = _sessions(5, config)
    old_clients = _sessions(5, config)[1]
    _drive(first, old_clients, ["advertise_keys", "share_keys"])
    second, clients = _sessions(5, config)
    _drive(second, clients, ["advertise_keys", "share_keys"])
    second.mailbox[1][VICTIM] = first.mailbox[1][VICTIM]  # the first run's blob and signature
    request = second.broadcast("masked_input")[1]
    reply = wire.parse(clients[1].handle("masked_input", request))
    assert reply.array(0, dtype="<u4").tolist() == []  # no key revealed
    assert reply.array(2, dtype="<u4").tolist() == [VICTIM]  # reported as unsigned
