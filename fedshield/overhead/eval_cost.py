"""What secure evaluation costs: the round's second session, which sums the sites' evaluation
counts so the server learns only the pooled metrics (:mod:`fedshield.engine.secure_eval`).

Under ``secagg`` it is a whole SecAgg+ session on the exact count grid
(:class:`~fedshield.protocols.counts.CountGrid`); under ``he`` (BFV, shared or threshold keys)
an HE session under the run's keys (:mod:`fedshield.protocols.he.count_sum`). ``plain`` sums
the counts in the clear (no session), and the peers have no secure evaluation at all: Flower's
SecAgg+ protects ``fit`` only, and the FLARE way encrypts model weights only.

The input does not depend on the model: a binary task's summary is 8,197 counts (``n``, the
confusion matrix and two histograms of 4,096 score bins), so the cost varies with ``n`` and
the protection only. Each site's summary is a real :class:`EvaluationSummary
<fedshield.engine.evaluation.EvaluationSummary>` of a seeded test set, sent through
:func:`~fedshield.engine.secure_eval.counts_client` as the engine does; the revealed sum must
equal the sum of the summaries exactly (else ``RuntimeError``: a wrong result is no
measurement). The one-time key setup of ``he`` is the run's, not the evaluation's: not counted.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from fedshield.errors import ConfigError
from fedshield.overhead.measure import prepare, stage_columns

__all__ = ["EVAL_PROTECTIONS", "measure_evaluation", "run_evaluation_grid"]

EVAL_PROTECTIONS = ("secagg", "he-shared", "he-threshold")
TEST_EXAMPLES = 64  # each site's seeded test set (the counts' values; their length is fixed)


def _summary(site: int, classes: int):
    from fedshield.engine.evaluation import EvaluationSummary

    rng = np.random.default_rng(site)
    labels = rng.integers(0, classes, TEST_EXAMPLES)
    probs = rng.dirichlet(np.ones(classes), TEST_EXAMPLES)
    return EvaluationSummary.of(labels, probs, loss=0.5)


def measure_evaluation(protection: str, n: int, classes: int = 2) -> dict:
    """One evaluation round's count session of ``protection`` over ``n`` sites.

    Returns:
        ``values`` (counts per site), ``client_s``, ``server_s``, ``bytes_up``, ``bytes_down``
        (per site), ``critical_s`` and ``round_s``, as the training round's columns.

    Raises:
        ConfigError: a protection with no count session (``plain``, the peers), or one that
            refuses ``n``.
    """
    from fedshield.engine.evaluation import summary_length
    from fedshield.engine.runner import run_protocol
    from fedshield.engine.secure_eval import count_spec, count_vector, counts_client, counts_server
    from fedshield.engine.transport import InProcessTransport

    if protection not in EVAL_PROTECTIONS:
        raise ConfigError(
            f"{protection!r} has no secure evaluation session; measure one of {EVAL_PROTECTIONS}"
        )
    dim = summary_length(classes) - 1
    spec, setup = prepare(protection, n, dim)
    counts = count_spec(spec)
    ids = list(range(n))
    summaries = {c: _summary(c, classes) for c in ids}
    clients = {
        c: counts_client(counts, site_id=c, round=1, summary=summaries[c],
                         identity=setup["identities"][c])
        for c in ids
    }  # fmt: skip
    server = counts_server(counts, round=1, clients=ids, classes=classes)
    start = time.perf_counter()
    outcome = run_protocol(server, InProcessTransport(clients))
    round_s = time.perf_counter() - start
    if outcome.revealed is None:
        raise ConfigError(f"{protection}: the count session aborted: {outcome.aborted}")
    exact = sum(count_vector(s).astype(np.int64) for s in summaries.values())
    revealed = np.asarray(outcome.revealed.weighted_sum, dtype=np.float64)
    if not np.array_equal(revealed, exact):
        raise RuntimeError(f"{protection}: the revealed counts differ from the sites' sum")
    return {"values": dim, **stage_columns(outcome.stages, ids), "round_s": round_s}


def run_evaluation_grid(protections, sites, train_cells: list[dict], *, on_cell=None) -> list:
    """The count session of each protection in ``protections`` that has one, at each ``n`` in
    ``sites``, beside the training round of every model measured at that ``n``
    (``train_cells``: the grid's rows): ``vs_train`` holds evaluation / training for
    ``critical_s`` and ``bytes_up`` per model."""
    rows = []
    for protection in (p for p in protections if p in EVAL_PROTECTIONS):
        with contextlib.suppress(ConfigError):  # one-time loading stays out of the timings
            measure_evaluation(protection, min(sites))
        for n in sites:
            if on_cell is not None:
                on_cell(f"evaluation: {protection} / n={n}")
            row, start = {"protection": protection, "n": n}, time.perf_counter()
            try:
                row |= {"status": "ok", **measure_evaluation(protection, n)}
            except ConfigError as exc:
                rows.append({**row, "status": "refused", "reason": str(exc)})
                continue
            row["cell_s"] = time.perf_counter() - start
            row["vs_train"] = {
                t["model"]: {c: row[c] / t[c] for c in ("critical_s", "bytes_up") if t[c]}
                for t in train_cells
                if (t["protection"], t["n"], t["status"]) == (protection, n, "ok")
            }
            rows.append(row)
    return rows
