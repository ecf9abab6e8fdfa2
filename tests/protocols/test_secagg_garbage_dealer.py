"""SecAgg+ against a client that deals garbage shares of its own secrets, driving the real
sessions: its shares open, are well formed and match the commitments it signed, but decode
to nothing it committed to. Before (measured on 0de5544): every such round aborted at
``unmask`` ("the revealed shares decode to no secret matching the owner's commitment"), so
one malicious client could abort any round. Now the server proves it, every neighbour
checks the proof, and the honest clients' round completes with their exact sum; a server
without a real proof gets no pairwise seed."""

import secrets

import numpy as np
import pytest
from enrolment import signing_as
from test_secagg_complaints import CONFIG, D, N, _assert_exact_sum_of

from fedshield import wire
from fedshield.engine.dropout import DropoutPolicy
from fedshield.engine.runner import run_protocol
from fedshield.engine.transport import InProcessTransport
from fedshield.errors import IllegalTransition, MalformedMessage, SecAggAbort
from fedshield.protocols.secagg import SecAggClient, SecAggServer
from fedshield.protocols.secagg.channels import deal
from fedshield.protocols.secagg.common import pairwise_seed
from fedshield.protocols.secagg.expulsion import proofs_for

CHEATER = 2  # N, D and CONFIG as in the complaint tests, whose sum check this file shares


def _dealing(seed=None, mask_key=None, per_holder: bool = False):
    """A client class whose shares are of another seed or mask key than it committed to (or,
    ``per_holder``, each holder's from a polynomial of its own: on no common polynomial)."""

    class GarbageDealer(SecAggClient):
        def _deal(self, holders, receive):
            def dealt():
                return deal(self.channel_keys, holders, receive, round=self.round,
                            seed=seed or self.self_mask_seed, threshold=self.threshold,
                            mask_key=mask_key or self.mask_keys.private_bytes(),
                            sender=self.client_id)  # fmt: skip

            sealed, commitments = dealt()
            if per_holder:
                for i in range(len(holders)):
                    sealed[i], commitments[i] = (part[i] for part in dealt())
            return sealed, commitments, self._sign_deal(holders, sealed, commitments)

    return GarbageDealer


def _sessions(cheater_class):
    """A server and N clients, client CHEATER of ``cheater_class``."""
    rng = np.random.default_rng(5)
    server = SecAggServer(roster=signing_as(0)["roster"], round=1, clients=range(N), dim=D,
                          config=CONFIG)  # fmt: skip
    clients = {
        c: (cheater_class if c == CHEATER else SecAggClient)(
            client_id=c, **signing_as(c), round=1, weight=15.0, config=CONFIG, quant_seed=c,
            update=rng.uniform(-1, 1, D).astype(np.float32))
        for c in range(N)
    }  # fmt: skip
    return server, clients


def _round(cheater_class, dropout=None):
    server, clients = _sessions(cheater_class)
    outcome = run_protocol(server, InProcessTransport(clients), dropout=dropout)
    return server, clients, outcome


@pytest.mark.parametrize(
    "cheater_class",
    [_dealing(seed=secrets.token_bytes(32)), _dealing(per_holder=True)],
    ids=["another-seed", "no-polynomial"],
)
def test_a_survivor_dealing_garbage_seed_shares_is_expelled_and_the_round_completes(
    cheater_class,
):
    server, clients, outcome = _round(cheater_class)
    assert server.cheaters == {CHEATER: "seed"}
    assert server.describe()["cheaters"] == [CHEATER]
    assert CHEATER in outcome.revealed.dropped
    expel = outcome.stages[-1]
    assert sorted(expel.bytes_up) == [0, 1, 3, 4, 5]  # every neighbour revealed its seed
    _assert_exact_sum_of(server, clients, outcome, [0, 1, 3, 4, 5])


def test_a_dropped_client_dealing_garbage_key_shares_is_expelled_and_the_round_completes():
    """It drops before ``masked_input``: the survivors masked with it, and its mask key
    cannot be rebuilt from its shares; they reveal their seeds with it instead."""
    cheater = _dealing(mask_key=secrets.token_bytes(32))
    server, clients, outcome = _round(cheater, DropoutPolicy(schedule={"masked_input": [CHEATER]}))
    assert server.cheaters == {CHEATER: "key"}
    _assert_exact_sum_of(server, clients, outcome, [0, 1, 3, 4, 5])


def test_an_honest_round_has_no_expel_stage_traffic():
    server, clients, outcome = _round(SecAggClient)
    assert server.cheaters == {} and server.unkeyed == set()
    assert [s.stage for s in outcome.stages][-1] == "unmask"  # expel addressed nobody
    _assert_exact_sum_of(server, clients, outcome, range(N))


def _until_expel(cheater_class, through: str = "unmask"):
    """Sessions driven by hand through ``through`` (the server's stage closed)."""
    server, clients = _sessions(cheater_class)
    stages = ["advertise_keys", "share_keys", "masked_input", "consistency", "unmask"]
    for stage in stages[: stages.index(through) + 1]:
        for c, message in server.broadcast(stage).items():
            server.receive(stage, c, clients[c].handle(stage, message))
        server.close_stage(stage)
    return server, clients


def _forge_proof_against(server, victim: int, tamper=None) -> bytes:
    """The expel message a malicious server would send client 0: a claim that the honest
    ``victim`` dealt garbage, from the victim's real shares (``tamper``-ed)."""
    server.cheaters[victim] = "seed"
    server.unkeyed.add(victim)
    if tamper is not None:
        tamper(server.self_mask_seed_shares[victim])
    return server._server_message("expel", proofs_for(server)[0])


def _flip_one_share(shares):
    first = shares[0]
    shares[0] = type(first)(first.x, first.y ^ 1, first.threshold, first.secret_len)


@pytest.mark.parametrize(
    "tamper",
    [None, _flip_one_share, lambda shares: shares.pop()],
    ids=["honest-shares", "altered-share", "too-few-shares"],
)
def test_a_server_without_a_real_proof_gets_no_pairwise_seed(tamper):
    """An honest dealer's shares always decode to what it committed to, and a share it never
    dealt misses its commitment: each forged proof is refused, and no seed comes back."""
    server, clients = _until_expel(SecAggClient)
    request = _forge_proof_against(server, victim=3, tamper=tamper)
    with pytest.raises(SecAggAbort, match=r"does not hold|dealt and signed|distinct shares"):
        clients[0].handle("expel", request)


def test_a_survivor_named_without_a_proof_earns_no_seed():
    """Seed shares of every survivor were revealed: naming one as unkeyed, with no openings
    (as for a dropped client), would hand the server its last masks."""
    server, clients = _until_expel(SecAggClient)
    server.unkeyed.add(3)
    request = server._server_message("expel", proofs_for(server)[0])
    with pytest.raises(SecAggAbort, match="distinct shares"):
        clients[0].handle("expel", request)


def test_a_proof_against_a_peer_the_client_did_not_mask_with_is_refused():
    server, clients = _until_expel(_dealing(seed=secrets.token_bytes(32)))
    request = server._server_message("expel", proofs_for(server)[0])
    clients[0].accused.add(CHEATER)  # as if it had left the cheater out of its input
    with pytest.raises(SecAggAbort, match="did not mask with"):
        clients[0].handle("expel", request)


def test_a_real_proof_earns_exactly_the_seed_the_cheater_already_knows():
    """What the server sees at ``expel``: client 0's pairwise seed with the cheater, the one
    the cheater derives itself, and nothing else."""
    server, clients = _until_expel(_dealing(seed=secrets.token_bytes(32)))
    request = server._server_message("expel", proofs_for(server)[0])
    answer = wire.parse(clients[0].handle("expel", request))
    cheater = clients[CHEATER]
    known = pairwise_seed(cheater.mask_keys, clients[0].mask_keys.public_bytes, round=1,
                          me=CHEATER, peer=0, params=cheater.params)  # fmt: skip
    assert answer.array(0, dtype="<u4").tolist() == [CHEATER]
    assert answer.raw(1) == known


def test_a_client_that_refused_to_unmask_reveals_no_pairwise_seed():
    """Reviewer's attack: a client whose unmask failed (here on a garbage message) still
    answered expel, and revealed its seed with a peer it had never unmasked for. A session
    whose stage failed now refuses every later stage."""
    server, clients = _until_expel(SecAggClient, through="consistency")
    with pytest.raises(MalformedMessage):
        clients[0].handle("unmask", b"garbage")
    server.unkeyed.add(3)
    request = server._server_message("expel", proofs_for(server)[0])
    with pytest.raises(IllegalTransition, match="ended with MalformedMessage at stage 'unmask'"):
        clients[0].handle("expel", request)


@pytest.mark.parametrize(
    ("gone", "reason"),
    [([0], "cannot leave the sum"), ([0, 1], "clients left after 'unmask'")],
    ids=["a-neighbour-left", "too-few-without-the-cheater"],
)
def test_expel_aborts_before_asking_anyone_when_it_cannot_complete(gone, reason):
    """A survivor that masked with the cheater and left before ``expel`` (its mask can never
    leave the sum), or too few survivors once the cheater is out: the round aborts before
    any pairwise seed is revealed."""
    cheater = _dealing(seed=secrets.token_bytes(32))
    _, _, outcome = _round(cheater, DropoutPolicy(schedule={"unmask": gone}))
    assert outcome.revealed is None and reason in outcome.aborted
    assert "expel" not in [s.stage for s in outcome.stages if s.bytes_up]
