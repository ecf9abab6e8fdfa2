"""Evaluation counts summed under ``he`` (fedshield/protocols/he/count_sum.py): exact under
shared and threshold keys, the server sees ciphertexts and holds no key, and malformed inputs
are typed errors while the honest sites' sum completes."""

from __future__ import annotations

import numpy as np
import pytest
from threshold_federation import CONFIG, federation

from fedshield import wire
from fedshield.audit.keywalk import reachable_secrets
from fedshield.engine.runner import run_protocol
from fedshield.engine.transport import InProcessTransport, Reply
from fedshield.errors import ConfigError, IllegalTransition, WrongShape
from fedshield.protocols.counts import MAX_COUNT_LIMIT, CountGrid
from fedshield.protocols.he.common import HEStage
from fedshield.protocols.he.keys import HEKeyring
from fedshield.protocols.he.params import HEConfig, plan_for
from fedshield.protocols.registry import HESpec

DIM = 8197  # a binary task's count vector (summary_length(2) - 1)
MAX = 65_535


def _shared_spec(n: int = 3) -> HESpec:
    config = HEConfig(clip=0.1, quant_bits=8, weight_bits=8)
    plan = plan_for(config, n_clients=n, dim=500)
    key = HEKeyring.generate(plan).secret_bytes()
    keyrings = {c: HEKeyring.from_secret_bytes(plan, key) for c in range(n)}
    return HESpec(config, plan=plan, keyrings=keyrings)


def _threshold_spec(n: int = 3):
    plan, roster, identities, keyrings = federation(n)
    return HESpec(CONFIG, plan=plan, roster=roster, keyrings=keyrings), identities


def _spec(keys: str):
    return (_shared_spec(), [None] * 3) if keys == "shared" else _threshold_spec()


def _counts(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = [rng.integers(0, 50, DIM).astype(np.float32) for _ in range(n)]
    out[0][:3] = MAX  # the bound itself sums exactly
    return out


def _sessions(spec, identities, counts, round: int = 1):
    counting = spec.for_counts(MAX)
    clients = {
        c: counting.client(client_id=c, round=round, update=u, weight=1.0, identity=identities[c])
        for c, u in enumerate(counts)
    }
    server = counting.server(round=round, clients=sorted(clients), dim=DIM)
    return server, clients


@pytest.mark.parametrize("keys", ["shared", "threshold"])
def test_the_revealed_count_sum_is_exact_and_every_site_decrypted_it(keys):
    spec, identities = _spec(keys)
    counts = _counts(3)
    server, clients = _sessions(spec, identities, counts, round=11)
    outcome = run_protocol(server, InProcessTransport(clients))
    assert outcome.aborted is None, outcome.aborted
    exact = np.sum([c.astype(np.int64) for c in counts], axis=0)
    assert np.array_equal(outcome.revealed.weighted_sum, exact)
    for client in clients.values():
        assert np.array_equal(client.aggregate[0], exact)
    assert outcome.revealed.contributors == (0, 1, 2)


class _Recording(InProcessTransport):
    def __init__(self, sessions) -> None:
        super().__init__(sessions)
        self.sent: dict[str, dict[int, bytes]] = {}

    def exchange(self, stage, messages):
        replies = super().exchange(stage, messages)
        self.sent[stage] = {c: r.data for c, r in replies.items()}
        return replies


def test_attack_first_the_server_sees_ciphertexts_only_and_holds_no_key():
    # in the clear (plain, he before this), a site's summary is its message: readable
    histogram = _counts(3, seed=5)[1]
    clear = wire.serialize(wire.Header(1, 1, 1, 1), [histogram.astype(np.float64)])
    assert histogram.astype("<f8").tobytes() in clear
    spec, identities = _spec("shared")
    server, clients = _sessions(spec, identities, _counts(3, seed=5), round=2)
    transport = _Recording(clients)
    assert run_protocol(server, transport).aborted is None
    sent = transport.sent["input"][1]
    for dtype in ("<f4", "<f8", "<i8", "<u8"):  # no encoding of the counts is in the message
        assert histogram[:64].astype(dtype).tobytes() not in sent
    secrets, _ = reachable_secrets(server)
    assert not secrets, secrets


def test_a_count_out_of_range_or_a_fraction_is_refused_at_the_site():
    counting = _shared_spec().for_counts(MAX)
    for bad in (MAX + 1, -1, 0.5, np.nan):
        update = np.zeros(DIM, np.float32)
        update[7] = bad
        with pytest.raises(ConfigError, match="counts must"):
            counting.client(client_id=0, round=1, update=update, weight=1.0)


def test_a_site_of_the_wrong_length_fails_alone_and_the_others_sum():
    spec, identities = _spec("shared")
    counts = _counts(3)
    counts[2] = counts[2][:-1]
    server, clients = _sessions(spec, identities, counts[:2], round=3)
    clients[2] = spec.for_counts(MAX).client(client_id=2, round=3, update=counts[2], weight=1.0)
    server = spec.for_counts(MAX).server(round=3, clients=[0, 1, 2], dim=DIM)
    outcome = run_protocol(server, InProcessTransport(clients))
    assert outcome.aborted is None
    assert outcome.revealed.contributors == (0, 1)
    assert np.array_equal(outcome.revealed.weighted_sum, counts[0] + counts[1])
    with pytest.raises(IllegalTransition, match="WrongShape at stage 'input'"):
        clients[2].handle("input", _ask(server, 2))  # its session ended on its own refusal


def test_update_session_and_replayed_ciphertexts_are_refused_as_count_ciphertexts():
    spec, identities = _spec("shared")
    counts = _counts(3)
    # an update session's input (same key, same context, same round) offered to the count server
    update_client = spec.client(client_id=1, round=4, update=np.zeros(500, np.float32),
                                weight=1.0)  # fmt: skip
    update_server = spec.server(round=4, clients=[0, 1, 2], dim=500)
    update_input = update_client.handle("input", update_server.broadcast("input")[1])
    server, clients = _sessions(spec, identities, counts, round=4)
    server.broadcast("input")
    with pytest.raises(WrongShape, match="other parameters"):
        server.receive("input", 1, update_input)
    # a count input of round 4 replayed in round 5
    old = clients[2].handle("input", _ask(server, 2))
    server5, _ = _sessions(spec, identities, counts, round=5)
    server5.broadcast("input")
    with pytest.raises(Exception, match="round") as info:
        server5.receive("input", 2, old)
    assert type(info.value).__module__ == "fedshield.errors"


def _ask(server, site: int) -> bytes:
    """The count server's ``input`` request (as its broadcast sends it)."""
    return server._server_message(HEStage.INPUT, [server.plan.params_id])


def test_the_sites_must_report_one_sum_or_nothing_is_revealed():
    spec, identities = _spec("shared")
    server, clients = _sessions(spec, identities, _counts(3), round=6)
    honest = clients[2]._take_aggregate

    def lying(stage, message):
        honest(stage, message)
        wrong = (honest.__self__.aggregate[0] + 1, 0.0)
        from fedshield.protocols.he.reports import report_fields

        return honest.__self__._client_message(stage, report_fields(honest.__self__.plan, wrong))

    clients[2]._take_aggregate = lying
    clients[2].handle = _rebind(clients[2], lying)
    outcome = run_protocol(server, InProcessTransport(clients))
    assert outcome.revealed is None and "different count sums" in outcome.aborted


def _rebind(client, lying):
    original = client.handle

    def handle(stage, payload):
        if stage == "aggregate":
            return lying(stage, wire.parse(payload))
        return original(stage, payload)

    return handle


@pytest.mark.parametrize("keys", ["shared", "threshold"])
def test_a_site_that_sends_a_count_beyond_the_bound_cannot_have_a_sum_recorded(keys):
    # Found by `fedshield audit` (bounds/he-*-counts): the honest sites refused the sum off the
    # grid by going silent, so the liar's report was the only one and the server recorded it.
    spec, identities = _spec(keys)
    counts = _counts(3)
    for c in counts:
        c[5] = 0
    server, clients = _sessions(spec, identities, counts, round=7)
    clients[1].grid = CountGrid(MAX_COUNT_LIMIT)  # the liar's code skips its own check
    clients[1].update[5] = 3 * MAX + 1  # the smallest sum three honest sites cannot send
    outcome = run_protocol(server, InProcessTransport(clients))
    assert outcome.revealed is None
    assert "refused the decrypted count sum" in outcome.aborted
    assert clients[0].aggregate is None and clients[2].aggregate is None


class _SilentAt(InProcessTransport):
    """The ``silent`` sites never answer ``stage`` (they died, or were cut off)."""

    def __init__(self, sessions, stage: str, silent: set[int]) -> None:
        super().__init__(sessions)
        self.stage, self.silent = stage, silent

    def exchange(self, stage, messages):
        cut = self.silent if stage == self.stage else set()
        replies = super().exchange(stage, {c: m for c, m in messages.items() if c not in cut})
        replies.update({c: Reply(None, error="gone") for c in cut & set(messages)})
        return replies


@pytest.mark.parametrize("keys", ["shared", "threshold"])
def test_a_lone_report_of_a_count_sum_off_the_grid_is_not_recorded(keys):
    # Found in review: with the honest sites gone at the last stage, the liar's own report of
    # the off-grid sum was the only one, and the server (which checked only for negative
    # counts) recorded it. The server knows the contributors and the bound, so it checks.
    spec, identities = _spec(keys)
    counts = _counts(3)
    server, clients = _sessions(
        spec, identities, counts, round=8
    )  # keyrings are shared: one input per round, ever
    clients[1].grid = CountGrid(MAX_COUNT_LIMIT)  # the liar's code skips its own check
    clients[1].update[5] = 3 * MAX + 1
    for c in (0, 2):  # honest sites that would refuse the sum never answer
        clients[c].grid = CountGrid(MAX_COUNT_LIMIT)
    outcome = run_protocol(server, _SilentAt(clients, "aggregate", {0, 2}))
    assert outcome.revealed is None
    assert "beyond" in outcome.aborted
