"""A server that misbehaves at random (hypothesis): at every stage, to random clients, it drops,
truncates, duplicates, swaps (another client's message), replays (an earlier stage's
message) or alters (a different survivor set, fewer signatures, a share in a proof) what it
sends; in some rounds client 1 deals garbage shares of its seed, so the ``expel`` stage runs.
Whatever it does, no client crashes (each answers or refuses with a typed error), and honest
clients never reveal both a self-mask seed's and a mask key's threshold of shares for one
client, nor a pairwise seed with a client whose seed shares reached the threshold (unless it
is the garbage dealer), which is what unmasking an individual update takes; a round that
completes gives the exact mean of its contributors."""

import secrets

import numpy as np
from enrolment import ROSTER, signing_as
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_secagg_garbage_dealer import _dealing

from fedshield import wire
from fedshield.engine.runner import run_protocol
from fedshield.engine.transport import InProcessTransport, Reply
from fedshield.protocols.secagg import STAGES, SecAggClient, SecAggServer
from fedshield.protocols.secagg.config import SecAggConfig

ACTIONS = ("honest", "drop", "truncate", "duplicate", "swap", "replay", "alter")
CONFIG = SecAggConfig(clip=1.0, quant_bits=8, max_weight=10.0)


class _Misbehaving(InProcessTransport):
    """Delivers each stage's messages as ``plan[stage][client]`` says; records the shares
    every client reveals at ``unmask``."""

    def __init__(self, sessions, plan, server):
        super().__init__(sessions)
        self.plan, self.server = plan, server
        self.previous: dict[int, bytes] = {}
        self.seed_shares: dict[int, set[int]] = {}  # owner -> holders that revealed b shares
        self.key_shares: dict[int, set[int]] = {}  # owner -> holders that revealed key shares
        self.pair_seeds: set[tuple[int, int]] = set()  # (revealer, peer) at expel

    def exchange(self, stage, messages):
        replies = {}
        for cid, message in messages.items():
            action = self.plan[stage].get(cid, "honest")
            if action == "drop":
                replies[cid] = Reply(None, error="withheld")
                continue
            sent = self._mutate(stage, cid, message, messages, action)
            (reply,) = super().exchange(stage, {cid: sent}).values()
            if action == "duplicate":
                super().exchange(stage, {cid: sent})  # refused (typed), or answered again
            replies[cid] = reply
            self.previous[cid] = message
            if stage == "unmask" and reply.data is not None:
                self._record(cid, wire.parse(reply.data))
            if stage == "expel" and reply.data is not None:
                peers = wire.parse(reply.data).array(0, dtype="<u4").tolist()
                self.pair_seeds.update((cid, peer) for peer in peers)
        return replies

    def _mutate(self, stage, cid, message, messages, action):
        if action == "truncate":
            return message[: len(message) // 2]
        if action == "swap":
            others = [m for c, m in messages.items() if c != cid]
            return others[0] if others else message
        if action == "replay":
            return self.previous.get(cid, message)
        if action == "alter" and stage == "expel":  # a share in the proof, one bit off
            fields = list(wire.parse(message).fields)
            if len(fields[3]):
                fields[3] = bytes([fields[3][0]]) + bytes([fields[3][1] ^ 1]) + fields[3][2:]
            return self.server._server_message(stage, fields)
        if action == "alter" and stage in ("consistency", "unmask"):
            fields = wire.parse(message).fields
            ids = np.array(sorted(set(fields[0].tolist()) - {min(fields[0].tolist())} | {cid}),
                           dtype=np.uint32)  # fmt: skip
            if stage == "consistency":
                return self.server._server_message(stage, [ids])
            keep = [i for i, c in enumerate(fields[0].tolist()) if c in set(ids.tolist())]
            signatures = b"".join(fields[1][i * 64 : (i + 1) * 64] for i in keep)
            return self.server._server_message(stage, [fields[0][keep], signatures])
        return message

    def _record(self, holder, reply):
        for owners_field, found in ((0, self.seed_shares), (2, self.key_shares)):
            for owner in reply.array(owners_field, dtype="<u4").tolist():
                found.setdefault(owner, set()).add(holder)


@st.composite
def _plans(draw):
    n = draw(st.integers(4, 7), label="n")
    plan = {
        stage: draw(
            st.dictionaries(st.integers(0, n - 1), st.sampled_from(ACTIONS), max_size=n),
            label=stage,
        )
        for stage in STAGES
    }
    return n, plan, draw(st.booleans(), label="garbage dealer")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_plans())
def test_a_misbehaving_server_never_crashes_a_client_nor_unmasks_one(case):
    n, plan, garbage = case
    rng = np.random.default_rng(n)
    server = SecAggServer(roster=ROSTER, round=1, clients=range(n), dim=8, config=CONFIG)
    dealer = _dealing(seed=secrets.token_bytes(32)) if garbage else SecAggClient
    clients = {
        c: (dealer if c == 1 else SecAggClient)(
            client_id=c, **signing_as(c), round=1, weight=10.0, config=CONFIG,
            update=rng.uniform(-1, 1, 8).astype(np.float32))
        for c in range(n)
    }  # fmt: skip
    transport = _Misbehaving(clients, plan, server)
    outcome = run_protocol(server, transport)  # any non-typed error in a client fails here
    t = CONFIG.threshold_for(n)
    for owner in range(n):
        both = len(transport.seed_shares.get(owner, ())) >= t and (
            len(transport.key_shares.get(owner, ())) >= t
        )
        assert not both, f"client {owner}'s seed and mask key were both revealed"
    for revealer, peer in transport.pair_seeds:
        exposed = len(transport.seed_shares.get(peer, ())) >= t
        assert not exposed or (garbage and peer == 1), f"{revealer} unmasked {peer}"
    event("completed" if outcome.revealed is not None else "aborted")
    if transport.pair_seeds:
        event("pairwise seeds revealed at expel")
    if outcome.revealed is not None:  # a completed round is never a wrong result
        revealed = outcome.revealed
        mean = np.mean([clients[c].update for c in revealed.contributors], axis=0)
        step = 2 * CONFIG.clip / 255
        np.testing.assert_allclose(revealed.weighted_sum / revealed.total_weight, mean,
                                   atol=step)  # fmt: skip
