"""The evaluation path under attack (docs/evaluation.md, "What the server learns"): an
honest-but-curious server, a malicious server and a malicious site, each driving the real
site processes (:class:`~fedshield.engine.flower.site.SiteProcess`) and SecAgg+ count
sessions. A test whose attack succeeds states a documented limit; the others show the
attack refused."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from fedshield import wire
from fedshield.crypto.identity import Identity
from fedshield.engine.evaluation import SiteEvaluation
from fedshield.engine.experiment import (
    RunConfig,
    build_server_round,
    enrol_sites,
    with_data_facts,
)
from fedshield.engine.flower.apps import _pool_replies
from fedshield.engine.flower.site import SiteProcess
from fedshield.engine.metrics import predict
from fedshield.engine.secure_eval import MAX_COUNT, count_spec, count_vector, drive_counts
from fedshield.engine.transport import Reply, Transport
from fedshield.errors import FedshieldError, WrongRound
from fedshield.protocols.registry import MODEL_BROADCAST

SITES = 3


class _SiteProcesses(Transport):
    """Count-session stages answered by the site processes (``evalstage:<stage>``, as the
    Flower relay hands them over); a site that raises gives no reply (a dropout)."""

    def __init__(self, processes: dict[int, SiteProcess]) -> None:
        self.processes = processes

    def exchange(self, stage, messages):
        replies = {}
        for c, m in messages.items():
            try:
                replies[c] = Reply(self.processes[c].handle(f"evalstage:{stage}", m))
            except Exception as exc:  # the site refused: a dropout, as over Flower
                replies[c] = Reply(None, error=f"{type(exc).__name__}: {exc}")
        return replies


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """``(server, processes, spec)``: three enrolled site processes of a secagg run and the
    server round, with the count session's spec."""
    from fedshield.protocols.roster import Roster

    tmp = tmp_path_factory.mktemp("eval-attack")
    config = with_data_facts(RunConfig(sites=SITES, rounds=2, protect="secagg"))
    roster = Roster.load(enrol_sites(config, tmp))
    server = build_server_round(config)
    server.use_protocol(server.protocol.with_roster(roster))
    processes = {s: SiteProcess(config, s, roster, Identity.load(tmp / f"site{s}.identity"))
                 for s in range(SITES)}  # fmt: skip
    return server, processes, count_spec(server.protocol)


def _broadcast(server, round: int) -> bytes:
    """The server's evaluation request of ``round`` for its current model (a malicious
    server chooses the round and the model)."""
    header = wire.Header(MODEL_BROADCAST, 0, round, wire.SERVER_ID)
    return wire.serialize(header, [server.model.vector.astype("<f4")])


def _own_summary(process: SiteProcess):
    runtime = process.runtime
    labels, probs, loss = predict(runtime.model, runtime.site.test, runtime.trainer.loss_fn)
    return SiteEvaluation.of(labels, probs, loss)


def _sum(spec, processes, round: int, clients: list[int]) -> np.ndarray:
    outcome = drive_counts(spec, _SiteProcesses(processes), round=round, clients=clients,
                           classes=2)  # fmt: skip
    assert outcome.aborted is None, outcome.aborted
    assert list(outcome.revealed.contributors) == clients
    return np.asarray(outcome.revealed.weighted_sum, dtype=np.int64)


# --- honest-but-curious and malicious server ------------------------------------------------


def test_a_second_evaluation_of_one_round_is_refused_so_no_count_session_repeats(federation):
    # The attack: evaluate round r, sum all three sites; ask again for round r (same model,
    # same summaries, fresh count sessions) and sum only sites 0 and 1. The difference would
    # be site 2's counts exactly. Every site refuses the second request.
    server, processes, spec = federation
    request = _broadcast(server, 5)
    for process in processes.values():
        process.handle("evaluate", request)
    _sum(spec, processes, 5, [0, 1, 2])
    for process in processes.values():
        with pytest.raises(WrongRound, match="already evaluated"):
            process.handle("evaluate", request)
        with pytest.raises(WrongRound):  # nor an earlier round's
            process.handle("evaluate", _broadcast(server, 4))


def test_limit_one_model_evaluated_in_two_rounds_with_a_site_dropped_gives_its_counts(
    federation,
):
    # Documented limit (docs/evaluation.md, "Differences of sums"): the server sends the same
    # model in two rounds (a malicious server can; an honest one does after a round whose
    # aggregate aborted) and one site drops out of the second count session (it died, or
    # the server did not forward its messages): the two sums differ by that site's counts.
    server, processes, spec = federation
    for process in processes.values():
        process.handle("evaluate", _broadcast(server, 7))
    first = _sum(spec, processes, 7, [0, 1, 2])
    for process in processes.values():
        process.handle("evaluate", _broadcast(server, 8))
    second = _sum(spec, processes, 8, [0, 1])
    assert np.array_equal(first - second, count_vector(_own_summary(processes[2]).summary))


def test_limit_a_sites_own_metrics_give_the_server_its_confusion_matrix(federation):
    # Documented limit (docs/evaluation.md, "Each site's own metrics"): under secagg the
    # confusion counts are summed securely, but each site's own metrics travel in the clear
    # and its n, accuracy, sensitivity and specificity pin its confusion matrix.
    server, processes, _ = federation
    process = processes[1]
    reply = wire.parse(process.handle("evaluate", _broadcast(server, 11)))
    seen = json.loads(reply.raw(1, max_len=1 << 16))  # what the server receives
    candidates = []
    n = seen["n"]
    for positives in range(n + 1):
        tp = seen["sensitivity"] * positives if positives else 0.0
        tn = seen["specificity"] * (n - positives) if n - positives else 0.0
        exact = abs(tp - round(tp)) < 1e-9 and abs(tn - round(tn)) < 1e-9
        if exact and abs((round(tp) + round(tn)) / n - seen["accuracy"]) < 1e-12:
            tp, tn = round(tp), round(tn)
            candidates.append([[tn, n - positives - tn], [positives - tp, tp]])
    truth = _own_summary(process).summary.confusion.tolist()
    assert candidates == [truth]


def test_a_count_session_refuses_another_sessions_messages(federation):
    # A malicious server feeds a site's count session the advertisement of a session with
    # another max_count (a wider ring), of the round's update session (its keys), or of the
    # previous round's count session (a replay): each is refused before the site sends a key.
    server, processes, spec = federation
    for process in processes.values():
        process.handle("evaluate", _broadcast(server, 20))
    recorder = _SiteProcesses(processes)
    recorded = {}
    exchange = recorder.exchange
    recorder.exchange = lambda stage, messages: (recorded.setdefault(stage, dict(messages)),
                                                 exchange(stage, messages))[1]  # fmt: skip
    drive_counts(spec, recorder, round=20, clients=[0, 1, 2], classes=2)
    for process in processes.values():
        process.handle("evaluate", _broadcast(server, 21))
    dim = count_vector(_own_summary(processes[0]).summary).size
    wider = server.protocol.for_counts(2 * MAX_COUNT).server(round=21, clients=[0, 1, 2], dim=dim)
    ranges = server.model.round_ranges(21)
    update = server.protocol.server(round=21, clients=[0, 1, 2], ranges=ranges,
                                    dim=server.model.compressor.protocol_dim)  # fmt: skip
    first = spec.server(round=21, clients=[0, 1, 2], dim=dim).stages[0]
    forged = {
        "another max_count": wider.broadcast(first)[0],
        "the update session": update.broadcast(first)[0],
        "round 20's count session": recorded[first][0],
    }
    for what, message in forged.items():
        with pytest.raises(Exception) as refused:
            processes[0].handle(f"evalstage:{first}", message)
        assert isinstance(refused.value, FedshieldError), what


# --- malicious site -------------------------------------------------------------------------


def _evaluate_all(server, processes, round: int) -> dict[int, Reply]:
    return {s: Reply(p.handle("evaluate", _broadcast(server, round)))
            for s, p in processes.items()}  # fmt: skip


def _drive(spec, processes, round: int):
    def drive(clients):
        return drive_counts(spec, _SiteProcesses(processes), round=round, clients=clients,
                            classes=2)  # fmt: skip

    return drive


def _forge(process: SiteProcess, round: int, spec, counts: np.ndarray) -> None:
    """Site ``process`` swaps its count session for one over ``counts`` of its choosing
    (a malicious site skips every check but the ring's bound, which the protocol enforces)."""
    process.count_session = spec.client(client_id=process.site, round=round,
                                        update=counts.astype(np.float32), weight=1.0,
                                        identity=process.runtime.identity)  # fmt: skip


NAMES = {s: f"site{s}" for s in range(SITES)}
ROUNDS = itertools.count(100)


def test_counts_that_are_no_summary_give_an_error_not_a_crashed_server(federation):
    server, processes, spec = federation
    replies = _evaluate_all(server, processes, 30)
    bad = np.zeros(count_vector(_own_summary(processes[2]).summary).size)
    bad[10] = 7  # seven examples in a histogram, none in n or the confusion matrix
    _forge(processes[2], 30, spec, bad)
    pooled, per_site, _, _ = _pool_replies(replies, NAMES, 30, 2, _drive(spec, processes, 30))
    assert "inconsistent" in pooled["error"] and pooled["auc"] != pooled["auc"]
    assert set(per_site) == set(NAMES.values())  # every site's own metrics are kept


def test_limit_one_site_moves_the_pooled_auc_as_far_as_max_count_examples_can(federation):
    # Documented limit (docs/evaluation.md, "A malicious site"): the server sees only the
    # sum, so a site's consistent counts of up to MAX_COUNT examples are pooled as they come.
    server, processes, spec = federation
    replies = _evaluate_all(server, processes, 31)
    labels = np.repeat([0, 1], MAX_COUNT // 2)
    liar = SiteEvaluation.of(labels, 1.0 - labels, 0.1)  # every score the wrong way round
    _forge(processes[2], 31, spec, count_vector(liar.summary))
    fields = list(wire.parse(replies[2].data).fields)
    fields[1] = liar.metrics_bytes()
    replies[2] = Reply(wire.serialize(wire.Header(MODEL_BROADCAST, 1, 31, 2), fields))
    pooled, _, _, _ = _pool_replies(replies, NAMES, 31, 2, _drive(spec, processes, 31))
    assert "error" not in pooled and pooled["auc"] < 0.01


def _tampered(reply: Reply, round: int, site: int, changes: dict[int, bytes]) -> Reply:
    fields = list(wire.parse(reply.data).fields)
    for field, value in changes.items():
        fields[field] = value
    return Reply(wire.serialize(wire.Header(MODEL_BROADCAST, 1, round, site), fields))


HUGE_N = b'{"n": 1' + b"0" * 400 + b', "loss": 0.5}'


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({1: b'{"n": 9, "loss": NaN, "accuracy": 0.5}'}, "loss"),
        ({1: b'{"n": 9, "loss": Infinity}'}, "loss"),
        ({1: HUGE_N}, "'n'"),
        ({1: HUGE_N, 4: b""}, "nor its own metrics alone"),  # a downgrade to the site mean
        ({3: b'"spent"'}, "DP-SGD"),
        ({3: b'{"epsilon": "x"}'}, "DP-SGD"),
        ({3: b"[1, 2]"}, "DP-SGD"),
    ],
)
def test_a_malformed_evaluation_reply_fails_that_site_and_the_others_are_pooled(
    federation, changes, reason
):
    server, processes, spec = federation
    round = next(ROUNDS)  # a fresh round per case
    replies = _evaluate_all(server, processes, round)
    replies[2] = _tampered(replies[2], round, 2, changes)
    pooled, per_site, _, _ = _pool_replies(replies, NAMES, round, 2,
                                           _drive(spec, processes, round))  # fmt: skip
    assert reason in per_site["site2"]["error"]
    assert "error" not in pooled and pooled["pooled_sites"] == ["site0", "site1"]
    honest = [_own_summary(processes[s]).summary for s in (0, 1)]
    assert pooled["n"] == honest[0].n + honest[1].n


def test_an_honest_dp_sgd_record_passes_the_check_a_malformed_one_fails():
    from fedshield.engine.dp import site_spent
    from fedshield.errors import InvalidMessage
    from fedshield.privacy.mechanisms import spent_record

    record = {**spent_record("dp-sgd", clip=1.0, noise_multiplier=1.1, delta=1e-5,
                             epsilon=float("inf")),
              "per_site_sigma_epsilon": [(1.1, 3.5), (1.2, float("inf"))]}  # fmt: skip
    assert site_spent(json.dumps(record).encode())["epsilon"] is None
    with pytest.raises(InvalidMessage, match="DP-SGD"):
        site_spent(json.dumps({**record, "per_site_sigma_epsilon": [[1.1]]}).encode())


# --- correctness on a real run --------------------------------------------------------------


def test_a_two_round_secagg_run_pools_exact_metrics_and_the_auc_within_0005():
    # `fedshield run --sites 3 --rounds 2` (in process, secagg): each round's pooled metrics,
    # summed in the count session, against the exact metrics of the sites' pooled predictions
    # (measured here: AUC off by 3e-5 and 1.5e-4, bounds 0.0021 and 0.0011, n = 450).
    from fedshield.engine.experiment import build_federation
    from fedshield.engine.metrics import classification_metrics

    fed = build_federation(with_data_facts(RunConfig(sites=3, rounds=2, local_epochs=1)))
    for _ in range(2):
        row = fed.run_round().metrics
        labels, probs, _ = zip(*(predict(r.load(fed.global_vector), r.site.test)
                                 for r in fed.runtimes), strict=True)  # fmt: skip
        exact = classification_metrics(np.concatenate(labels), np.concatenate(probs), 0.0)
        assert row["pooled_sites"] == [r.site.name for r in fed.runtimes]
        for key in ("accuracy", "sensitivity", "specificity", "balanced_accuracy", "n"):
            assert row[key] == exact[key], key
        error = abs(row["auc"] - exact["auc"])
        assert error <= min(0.005, row["auc_bin_error_max"] + 1e-12)


def test_own_metrics_refuse_a_size_beyond_the_count_bound():
    from fedshield.engine.secure_eval import own_metrics
    from fedshield.errors import InvalidMessage

    assert own_metrics(b'{"n": 65535, "loss": 0.5}')["n"] == MAX_COUNT
    with pytest.raises(InvalidMessage, match="at most 65535"):
        own_metrics(b'{"n": 65536, "loss": 0.5}')
