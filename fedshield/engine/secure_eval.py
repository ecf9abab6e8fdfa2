"""Evaluation summaries summed under secure aggregation: the server learns the pooled counts,
never one site's histograms (docs/evaluation.md, "What the server learns": each site's own
metrics, sent beside, give its size and confusion counts; two sums over one model that
differ by one site give that site's counts).

After a round's update session, each evaluating site opens a **second SecAgg+ session** whose
input is its summary's counts (:meth:`EvaluationSummary.to_vector
<fedshield.engine.evaluation.EvaluationSummary.to_vector>` without the loss sum: ``n``, the
confusion counts and the histograms), on the exact integer grid
(:class:`~fedshield.protocols.counts.CountGrid`, every weight 1, counts at most
:data:`MAX_COUNT`). The server unmasks the sum of the survivors' counts (exact integers) and
pools the metrics from it; a site that drops out of that session is simply not in the sum,
and the record lists the sites pooled (``pooled_sites``).

**Fresh keys, no reuse.** The count session is a whole SecAgg+ session with its own key pairs,
self-mask seed and Shamir shares: nothing of the update session is reused. Reusing the round's
advertised mask keys would save two stages, but a second vector masked with the same pairwise
seeds and PRG stream would give the server the difference of the two inputs; it would need a
domain-separated mask derivation in the protocol's core. Its parameters differ from the update
session's (``counts`` and ``weight_bits = 0`` enter :meth:`SecAggConfig.digest
<fedshield.protocols.secagg.config.SecAggConfig.digest>`), and that digest is bound into every
signature and pairwise mask, so no message of one session passes in the other. The price over
Flower is one SecAgg+ session's stages per round (about 4-5 s each here).

**Public parameters.** The count session is derived from the run's ``secagg`` spec (its roster,
threshold, neighbours, colluders, pinned minimum) and :data:`MAX_COUNT`, a constant of the
code: every party derives the same, so the roster need pin nothing more.

**The loss** is a float and stays out of the secure vector: the pooled loss is
``sum(loss_i · n_i) / sum(n_i)`` over the pooled sites, from each site's own metrics (which it
sends anyway, ``per_site``); the same float the clear sum gives.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedshield.engine.evaluation import EvaluationSummary, site_metrics, summary_length
from fedshield.engine.metrics import binary_metrics, with_failures
from fedshield.engine.runner import ProtocolOutcome, run_protocol
from fedshield.engine.transport import Transport
from fedshield.errors import ConfigError, FedshieldError, InvalidMessage
from fedshield.protocols.base import ClientSession, ServerSession
from fedshield.protocols.registry import ProtocolSpec

__all__ = [
    "MAX_COUNT",
    "POOLED_HE",
    "POOLED_SECURE",
    "count_spec",
    "count_vector",
    "counts_client",
    "drive_counts",
    "own_metrics",
    "pool_secure",
]

MAX_COUNT = 65_535  # public bound of a site's test set under secagg (ring: 18 bits at n = 3)
POOLED_SECURE = "summed under secagg"
POOLED_HE = "summed under he"


def count_spec(protocol: ProtocolSpec) -> ProtocolSpec | None:
    """The run's count session (``None``: summaries are summed in the clear)."""
    return protocol.for_counts(MAX_COUNT)


def own_metrics(raw: bytes) -> dict:
    """A site's own metrics as they arrive beside its count session (:func:`site_metrics`),
    with the ``n`` and ``loss`` the pooled loss needs.

    Raises:
        InvalidMessage: metrics without a count ``n`` (an integer in ``[0, MAX_COUNT]``, the
            count ring's bound) or a ``loss`` (finite where ``n > 0``: one site's NaN or
            infinity would be the pooled loss).
    """
    metrics = site_metrics(raw)
    n, loss = metrics.get("n"), metrics.get("loss")
    if not isinstance(n, int) or not 0 <= n <= MAX_COUNT or not isinstance(loss, int | float):
        raise InvalidMessage(
            f"a site's metrics must give its test set's size n (at most {MAX_COUNT}) and its loss"
        )
    if n and not math.isfinite(loss):
        raise InvalidMessage(f"a site's loss must be finite on its {n} examples, got {loss}")
    return metrics


def count_vector(summary: EvaluationSummary) -> np.ndarray:
    """The counts a site sends under secagg: its summary vector without the loss sum, as
    float32 (exact: every count is at most :data:`MAX_COUNT`).

    Raises:
        ConfigError: a test set larger than :data:`MAX_COUNT` (refused before anything is
            sent, as a count beyond the ring's bound would wrap around).
    """
    if summary.n > MAX_COUNT:
        raise ConfigError(
            f"a test set of {summary.n} examples exceeds the {MAX_COUNT} a site may evaluate "
            "on under secagg (the count ring's public bound); use a smaller test split"
        )
    return np.delete(summary.to_vector(), 1).astype(np.float32)


def counts_client(
    spec: ProtocolSpec, *, site_id: int, round: int, summary: EvaluationSummary, identity
) -> ClientSession:  # fmt: skip
    """Site ``site_id``'s count session of ``round`` for its ``summary``."""
    return spec.client(client_id=site_id, round=round, update=count_vector(summary),
                       weight=1.0, identity=identity)  # fmt: skip


def counts_server(spec: ProtocolSpec, *, round: int, clients: list[int], classes: int):
    """The server's count session of ``round`` over ``clients``' summaries."""
    session: ServerSession = spec.server(
        round=round, clients=clients, dim=summary_length(classes) - 1
    )
    return session


def drive_counts(
    spec: ProtocolSpec, transport: Transport, *, round: int, clients: list[int], classes: int
) -> ProtocolOutcome:  # fmt: skip
    """The count session's stages over ``transport``; its outcome (``revealed``: the summed
    counts of its contributors, or ``None`` with ``aborted`` saying why)."""
    if not clients:
        return ProtocolOutcome(None, [], aborted="no site opened a count session")
    server = counts_server(spec, round=round, clients=clients, classes=classes)
    return run_protocol(server, transport)


def pool_secure(
    outcome: ProtocolOutcome,
    own: Mapping[int, tuple[str, dict]],
    failed: Mapping[str, str],
    *,
    classes: int,
    protection: str = "secagg",
) -> tuple[dict, dict[str, dict]]:
    """``(pooled, per_site)`` from the count session's ``outcome`` and each evaluating site's
    own metrics (``own``: site id → (name, metrics)): the pooled metrics of the revealed sum
    (``pooled_sites`` names its contributors), each site's own metrics, each failed one listed
    with its error. If the session aborted, the pooled metrics are NaN with the reason.
    ``protection``: the run's (``secagg``, or ``he`` where the sites decrypted the sum and
    reported it, :mod:`fedshield.protocols.he.count_sum`)."""
    label = POOLED_HE if protection == "he" else POOLED_SECURE
    per_site = {name: dict(metrics) for name, metrics in own.values()}
    pooled = {**binary_metrics(np.zeros(0), np.zeros(0)), "pooled": label}
    revealed = outcome.revealed
    if revealed is None:
        pooled["error"] = f"the secure sum of the evaluation summaries aborted: {outcome.aborted}"
        pooled["pooled_sites"] = []
        return with_failures(pooled, per_site, dict(failed))
    contributors = [c for c in revealed.contributors if c in own]
    metrics = [own[c][1] for c in contributors]
    loss_sum = sum(float(m["loss"]) * m["n"] for m in metrics if m.get("n"))
    counts = np.asarray(revealed.weighted_sum, dtype=np.float64)
    try:  # one site's counts that are no summary spoil the sum (which site: secret)
        total = EvaluationSummary.from_vector(np.insert(counts, 1, loss_sum), classes=classes)
        error = None
    except FedshieldError as exc:
        error = f"the summed counts are inconsistent (some site sent no summary): {exc}"
    if error is None and total.n != sum(m["n"] for m in metrics):  # a site's own n lies
        error = "the sites' own sizes n disagree with their summed counts"
    if error is not None:
        pooled["error"], pooled["pooled_sites"] = error, []
        return with_failures(pooled, per_site, dict(failed))
    if total.n:
        pooled = {**total.metrics(), "pooled": label}
    pooled["pooled_sites"] = [own[c][0] for c in contributors]
    return with_failures(pooled, per_site, dict(failed))
