"""Evaluation summaries summed under secagg (docs/evaluation.md): both engines pool the same
numbers as the clear sum, a site that drops out of the count session is not pooled (and the
record says so), and a site never sends its summary in the clear."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedshield import wire
from fedshield.crypto.identity import Identity
from fedshield.engine.evaluation import EvaluationSummary, SiteEvaluation, pool_evaluations
from fedshield.engine.experiment import (
    RunConfig,
    build_server_round,
    enrol_sites,
    with_data_facts,
)
from fedshield.engine.flower.apps import _pool_replies, _site_result
from fedshield.engine.flower.site import SiteProcess
from fedshield.engine.metrics import predict
from fedshield.engine.secure_eval import (
    MAX_COUNT,
    POOLED_SECURE,
    count_spec,
    count_vector,
    counts_client,
    drive_counts,
    pool_secure,
)
from fedshield.engine.transport import InProcessTransport, Reply, Transport
from fedshield.errors import ConfigError, InvalidMessage
from fedshield.protocols.registry import MODEL_BROADCAST, get_protocol
from fedshield.protocols.roster import Roster

SECURE_ONLY = {"pooled", "pooled_sites"}


def _same_metrics(secure: dict, clear: dict) -> None:
    """Every pooled metric of the secure sum is the clear sum's, bit for bit (NaN alike)."""
    assert set(secure) - SECURE_ONLY == set(clear) - {"pooled"}
    for key in set(clear) - {"pooled"}:
        a, b = secure[key], clear[key]
        assert a == b or (a != a and b != b), key


def _evaluations(n_sites: int, seed: int = 3) -> dict[int, SiteEvaluation]:
    rng = np.random.default_rng(seed)
    out = {}
    for c in range(n_sites):
        labels = rng.integers(0, 2, 15 + 5 * c)
        probs = np.clip(rng.random(len(labels)) * 0.6 + labels * 0.3, 0, 1)
        out[c] = SiteEvaluation.of(labels, probs, float(rng.random()))
    return out


def _count_sessions(n: int):
    """``(spec, evaluations, sessions)``: ``n`` enrolled sites' count sessions of round 1."""
    roster, identities = Roster.enrol(range(n), min_sites=1)
    spec = get_protocol("secagg", max_weight=1.0, clip=0.1, quant_bits=8, sites=n)
    spec = count_spec(spec.with_roster(roster))
    evaluations = _evaluations(n)
    sessions = {
        c: counts_client(spec, site_id=c, round=1, summary=e.summary, identity=identities[c])
        for c, e in evaluations.items()
    }
    return spec, evaluations, sessions


def test_a_federation_under_secagg_pools_the_clear_sums_numbers(tiny_sites):
    from fedshield.engine import Federation, make_site
    from fedshield.engine.models import SmallCNN

    sites = [make_site(s, batch_size=8, seed=i) for i, s in enumerate(tiny_sites)]
    fed = Federation(model_factory=lambda: SmallCNN(1, width=4), sites=sites, protect="secagg")
    row = fed.run_round()
    assert row.metrics["pooled"] == POOLED_SECURE
    assert row.metrics["pooled_sites"] == [s.name for s in sites]
    clear = pool_evaluations({r.site.name: r.evaluate(fed.global_vector) for r in fed.runtimes})
    _same_metrics(row.metrics, clear[0])
    assert row.per_site == clear[1]
    labels = np.concatenate(
        [predict(r.load(fed.global_vector), r.site.test)[0] for r in fed.runtimes]
    )
    assert row.metrics["n"] == len(labels)


class _DropAt(InProcessTransport):
    """Site ``victim`` never answers ``stage`` (it died)."""

    def __init__(self, sessions, stage: str, victim: int) -> None:
        super().__init__(sessions)
        self.stage, self.victim = stage, victim

    def exchange(self, stage, messages):
        hit = stage == self.stage
        replies = super().exchange(
            stage, {c: m for c, m in messages.items() if not (hit and c == self.victim)}
        )
        if hit and self.victim in messages:
            replies[self.victim] = Reply(None, error="gone")
        return replies


def test_a_site_dropping_out_of_the_count_session_is_not_pooled_and_the_record_says_so():
    # five sites: the consistency quorum (4 of 5) lets one drop after sharing its keys
    spec, evaluations, sessions = _count_sessions(5)
    transport = _DropAt(sessions, "masked_input", victim=3)
    outcome = drive_counts(spec, transport, round=1, clients=[0, 1, 2, 3, 4], classes=2)
    assert outcome.aborted is None
    own = {c: (f"site{c}", e.metrics) for c, e in evaluations.items()}
    pooled, per_site = pool_secure(outcome, own, {}, classes=2)
    assert pooled["pooled_sites"] == ["site0", "site1", "site2", "site4"]
    clear, _ = pool_evaluations({f"site{c}": evaluations[c] for c in (0, 1, 2, 4)})
    _same_metrics(pooled, clear)
    assert set(per_site) == {f"site{c}" for c in range(5)}  # its own metrics stay its own


def test_an_aborted_count_session_gives_nan_metrics_with_the_reason():
    spec, evaluations, sessions = _count_sessions(3)
    outcome = drive_counts(spec, _DropAt(sessions, "masked_input", 0), round=1,
                           clients=[0, 1, 2], classes=2)  # fmt: skip
    own = {c: (f"site{c}", e.metrics) for c, e in evaluations.items()}
    pooled, _ = pool_secure(outcome, own, {}, classes=2)
    assert "aborted" in pooled["error"] and pooled["pooled_sites"] == []
    assert pooled["auc"] != pooled["auc"]  # NaN: nothing was revealed


def test_sites_whose_own_n_contradicts_the_summed_counts_are_not_pooled():
    spec, evaluations, sessions = _count_sessions(3)
    outcome = drive_counts(spec, InProcessTransport(sessions), round=1, clients=[0, 1, 2],
                           classes=2)  # fmt: skip
    own = {c: (f"site{c}", e.metrics) for c, e in evaluations.items()}
    own[1] = ("site1", {**own[1][1], "n": own[1][1]["n"] + 1})
    pooled, _ = pool_secure(outcome, own, {}, classes=2)
    assert "disagree" in pooled["error"]


def test_a_test_set_beyond_the_count_bound_is_refused_before_it_is_sent():
    labels = np.zeros(MAX_COUNT + 1, np.int64)
    summary = EvaluationSummary.of(labels, np.full(len(labels), 0.2), 0.1)
    with pytest.raises(ConfigError, match="exceeds"):
        count_vector(summary)


class _SiteProcesses(Transport):
    """The count session's stages answered by the site processes' own ``handle``, as the
    Flower relay hands them over (``evalstage:<stage>``)."""

    def __init__(self, processes: dict[int, SiteProcess]) -> None:
        self.processes = processes
        self.seen: dict[str, dict[int, bytes]] = {}

    def exchange(self, stage, messages):
        replies = {c: Reply(self.processes[c].handle(f"evalstage:{stage}", m))
                   for c, m in messages.items()}  # fmt: skip
        self.seen[stage] = {c: r.data for c, r in replies.items()}
        return replies


def test_site_processes_send_their_counts_masked_and_the_server_pools_the_clear_numbers(
    tmp_path,
):
    config = with_data_facts(RunConfig(sites=3, rounds=1, protect="secagg"))
    roster = Roster.load(enrol_sites(config, tmp_path))
    server = build_server_round(config)
    server.use_protocol(server.protocol.with_roster(roster))
    broadcast = server.broadcast()
    processes = {s: SiteProcess(config, s, roster, Identity.load(tmp_path / f"site{s}.identity"))
                 for s in range(3)}  # fmt: skip
    replies, expected = {}, {}
    for s, process in processes.items():
        replies[s] = Reply(process.handle("evaluate", broadcast))
        runtime = process.runtime
        expected[s] = SiteEvaluation.of(
            *predict(runtime.model, runtime.site.test, runtime.trainer.loss_fn)
        )
        fields = wire.parse(replies[s].data).fields
        assert fields[0].size == 0 and fields[4] == b"\x01"  # no summary in the clear
        evaluation, _, _, masked = _site_result(replies[s].data, s, 1, 2, secure=True)
        assert masked and evaluation == expected[s].metrics
    transport = _SiteProcesses(processes)
    spec = count_spec(server.protocol)

    def drive(clients):
        return drive_counts(spec, transport, round=1, clients=clients, classes=2)

    names = {s: f"site{s}" for s in range(3)}
    pooled, per_site, _, _ = _pool_replies(replies, names, 1, 2, drive)
    clear = pool_evaluations({f"site{s}": e for s, e in expected.items()})
    assert pooled["pooled"] == POOLED_SECURE and pooled["pooled_sites"] == list(names.values())
    _same_metrics(pooled, clear[0])
    assert per_site == clear[1]
    # what the server saw of each site's counts: its masked upload, no clear summary
    assert set(transport.seen["masked_input"]) == {0, 1, 2}


def test_a_clear_summary_under_secagg_or_a_count_session_under_plain_is_refused():
    evaluation = _evaluations(1)[0]
    header = wire.Header(MODEL_BROADCAST, 1, 1, 0)
    metrics = json.dumps(evaluation.metrics).encode()
    clear = wire.serialize(header, [evaluation.summary.to_vector(), metrics, b"", b"", b""])
    with pytest.raises(InvalidMessage, match="never in the clear"):
        _site_result(clear, 0, 1, 2, secure=True)
    flagged = wire.serialize(header, [np.zeros(0), metrics, b"", b"", b"\x01"])
    with pytest.raises(InvalidMessage, match="no count session"):
        _site_result(flagged, 0, 1, 2, secure=False)
    replies = {0: Reply(clear)}
    _, per_site, _, _ = _pool_replies(replies, {0: "site0"}, 1, 2, drive=lambda c: None)
    assert "never in the clear" in per_site["site0"]["error"]
    # its own metrics alone would make the round pool the site mean, the others' counts unsummed
    own_only = wire.serialize(header, [np.zeros(0), metrics, b"", b"", b""])
    with pytest.raises(InvalidMessage, match="nor its own metrics alone"):
        _site_result(own_only, 0, 1, 2, secure=True)
    assert _site_result(own_only, 0, 1, 2, secure=False)[0] == evaluation.metrics


def test_a_federation_under_he_pools_the_clear_sums_numbers(tiny_sites):
    from fedshield.engine import Federation, make_site
    from fedshield.engine.models import SmallCNN
    from fedshield.engine.secure_eval import POOLED_HE

    sites = [make_site(s, batch_size=8, seed=i) for i, s in enumerate(tiny_sites)]
    fed = Federation(model_factory=lambda: SmallCNN(1, width=4), sites=sites, protect="he")
    row = fed.run_round()
    assert row.metrics["pooled"] == POOLED_HE
    assert row.metrics["pooled_sites"] == [s.name for s in sites]
    clear = pool_evaluations({r.site.name: r.evaluate(fed.global_vector) for r in fed.runtimes})
    _same_metrics(row.metrics, clear[0])
    assert row.per_site == clear[1]
