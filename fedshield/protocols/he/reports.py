"""The decrypted count sum's way back to the server (evaluation under ``he``,
:mod:`fedshield.protocols.he.count_sum`).

In an update session a site acknowledges the aggregate with an empty message: the sum stays
with the sites. In a **count session** (:attr:`HEConfig.counts
<fedshield.protocols.he.params.HEConfig.counts>` set) each site that decrypted and accepted the
sum answers with it (int64, one value per count): the server learns the pooled counts, exactly
what it learns under ``secagg``, and never decrypts anything. It reveals the sum only if every
reporting site sent the same one; otherwise the session aborts (the pooled metrics carry the
error).

A site that finds the decrypted sum **off the count grid** (a count beyond what ``n`` sites of
at most ``max_count`` could send: some site sent counts out of bounds) answers with a
**refusal**, a receipt with no field, rather than going silent: silence reads as a dropout,
which would leave the out-of-bounds site's own report as the only one, and the server would
record whatever it claims. On a refusal the server aborts and records nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedshield import wire
from fedshield.errors import ProtocolAbort, WrongShape
from fedshield.protocols.he.params import HEPlan

__all__ = ["SumReports", "answer_aggregate", "report_fields"]

Aggregate = tuple[np.ndarray, float]


def report_fields(plan: HEPlan, aggregate: Aggregate) -> list:
    """A site's answer to the aggregate: the decrypted count sum in a count session, else
    nothing."""
    if plan.config.counts is None:
        return []
    return [np.ascontiguousarray(aggregate[0], dtype="<i8")]


def answer_aggregate(
    plan: HEPlan, decode: Callable[[], Aggregate]
) -> tuple[Aggregate | None, list]:
    """``(aggregate, receipt fields)``: the sum ``decode`` gives and the site's report of it.
    In a count session a sum off the grid (``decode`` raises ProtocolAbort) gives
    ``(None, [])``, the site's refusal; in an update session the abort is raised.

    Raises:
        ProtocolAbort: an update session's sum that honest sites could not have sent.
    """
    if plan.config.counts is None:
        return decode(), []
    try:
        aggregate = decode()
    except ProtocolAbort:
        return None, []  # a refusal: the server must record nothing
    return aggregate, report_fields(plan, aggregate)


class SumReports:
    """The server's record of the sums the sites report (count sessions only)."""

    def __init__(self, plan: HEPlan) -> None:
        self.plan = plan
        self.sums: dict[int, np.ndarray] = {}
        self.refused: set[int] = set()

    @property
    def counts(self) -> bool:
        """Whether this session reports its sum (a count session)."""
        return self.plan.config.counts is not None

    def max_bytes(self) -> int:
        """Bytes a receipt may carry beyond the header."""
        return 8 * self.plan.dim if self.counts else 0

    def take(self, sender: int, message: wire.Message) -> None:
        """One site's receipt: empty in an update session; in a count one, its decrypted sum,
        or no field: its refusal of a sum off the count grid.

        Raises:
            WrongShape: a receipt of the wrong form or a negative count.
        """
        if not self.counts:
            message.require_fields(0)
            return
        if not message.fields:
            self.refused.add(sender)
            return
        message.require_fields(1)
        values = message.array(0, dtype="<i8", shape=(self.plan.dim,)).astype(np.int64)
        if values.size and int(values.min()) < 0:
            raise WrongShape(f"client {sender} reported a negative count")
        self.sums[sender] = values

    def agreed(self, round: int, alive, contributors: int) -> np.ndarray | None:
        """The sum every site still in the session reported (``None`` in an update session),
        checked against the grid of ``contributors`` sites: a lone reporter cannot have a sum
        recorded that honest sites could not have sent.

        Raises:
            ProtocolAbort: a site refused the sum, the sites reported different sums, or the
                sum is beyond ``contributors`` times the bound.
        """
        if not self.counts:
            return None
        if self.refused:
            raise ProtocolAbort(
                f"round {round}: sites {sorted(self.refused)} refused the decrypted count sum "
                "(off the count grid: some site sent counts beyond the bound); nothing is "
                "recorded"
            )
        sums = [self.sums[c] for c in sorted(alive)]
        if any(not np.array_equal(sums[0], s) for s in sums[1:]):
            raise ProtocolAbort(
                f"round {round}: the sites decrypted different count sums; nothing is recorded"
            )
        bound = contributors * int(self.plan.config.counts)
        if sums[0].size and int(sums[0].max()) > bound:
            raise ProtocolAbort(
                f"round {round}: the reported count sum is beyond {bound} ({contributors} sites "
                f"of at most {self.plan.config.counts}); nothing is recorded"
            )
        return sums[0]
