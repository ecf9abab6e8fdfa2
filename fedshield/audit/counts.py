"""Audits of the count sessions of secure evaluation (``*-counts``, docs/evaluation.md): each
site's integer counts in ``[0, MAX_COUNT]``, summed exactly under ``secagg`` or ``he``.

Their ``exact``, ``reject``, ``no-key`` and ``dropout/secagg-counts`` checks are the run modes'
(:mod:`fedshield.audit.checks`, :mod:`fedshield.audit.rejection`); these are their own:

- ``dropout/<he count mode>``: sites vanish at sampled stages, and the round follows the
  documented tolerance (:mod:`fedshield.protocols.he.server`,
  :mod:`fedshield.protocols.he.threshold`): a site missing at ``input`` is left out of the sum
  while at least one site (threshold keys: the key's threshold ``t``) sent its input; once the
  sum is fixed every contributor must sign its digests and exactly ``t`` of them (the lowest
  ids) decrypt; at ``aggregate`` any one site's report reveals the sum. Exact over the sites
  that sent an input where it must complete; nothing revealed elsewhere.
- ``bounds/<count mode>``: one site sends a count above ``MAX_COUNT`` (``n * MAX_COUNT + 1``,
  where every other site sends 0: the smallest sum ``n`` honest sites cannot reach, and still
  within the ring or the packed field, so nothing wraps). The server (``secagg``) or every
  decrypting site (``he``) must see it is out of bounds: the round reveals nothing.
- ``report/<he count mode>/<kind>``: site 1's report of the decrypted sum, on its way to the
  server, is ``different`` (well-formed, one count one more): the sites disagree, so the round
  must reveal nothing (the pooled metrics carry the error), never the wrong sum; or
  ``negative`` (a count below 0): it must be refused (``InvalidMessage``) and the round complete
  exactly over every contributor, from the other sites' agreeing reports.
"""

from __future__ import annotations

import numpy as np

from fedshield import wire
from fedshield.audit.bed import COUNT_MODES, SITES, AuditBed
from fedshield.audit.checks import CheckFailed, Pattern, drop, register, sampled_dropouts
from fedshield.engine.secure_eval import MAX_COUNT
from fedshield.errors import InvalidMessage
from fedshield.protocols.counts import MAX_COUNT_LIMIT, CountGrid
from fedshield.protocols.he.threshold import decrypting_sites

__all__ = ["HE_COUNT_MODES", "REPORT_KINDS"]

HE_COUNT_MODES = tuple(m for m in COUNT_MODES if m.startswith("he-"))
REPORT_KINDS = ("different", "negative")
_PARTY = 1  # the site that sends a bad count or report


def _he_pattern(r, n: int, rng: np.random.Generator, stages) -> tuple:
    """``(schedule, contributors, enough)`` for an ``he`` count round of ``n`` sites: 0 to 2
    sites gone at each stage, the sites whose input is in the sum, and whether the protocol
    must complete (see the module's docstring)."""
    t = r.server.plan.key_threshold or 1  # shared keys: one contributor suffices
    schedule, alive, enough, contributors = {}, set(range(n)), True, set()
    for stage in stages:
        gone = schedule[stage] = drop(rng, alive)
        alive -= set(gone)
        if stage == "input":
            contributors = set(alive)
            enough &= len(contributors) >= t
        elif stage == "digest":  # every contributor signs its digests of the fixed sum
            enough &= not gone
        elif stage == "decrypt":  # exactly t sites decrypt: the lowest ids
            enough &= not set(gone) & set(decrypting_sites(sorted(contributors), t))
        elif stage == "aggregate":  # one report reveals the sum
            enough &= bool(alive)
    return schedule, contributors, enough


def _he_dropouts(mode: str, bed: AuditBed, rng: np.random.Generator, quick: bool) -> str:
    stages, n = bed.round_stages(mode), SITES[mode]

    def sample() -> Pattern:
        r = bed.round(mode)
        schedule, contributors, enough = _he_pattern(r, n, rng, stages)
        return r, schedule, contributors, enough, f"n={n}"

    return sampled_dropouts(20 if quick else 100, stages, sample)


def _bounds(mode: str, bed: AuditBed, rng: np.random.Generator, quick: bool) -> str:
    """A site whose code skips its own check sends ``n * MAX_COUNT + 1``: nothing may be
    revealed, whether the others answer every stage or go silent at the last one (then the
    liar's own report is the only one, and the server's own bound must stop it)."""
    outcomes = []
    for silent in (False, True):
        r = bed.round(mode)
        n, entry = len(r.clients), int(rng.integers(0, r.dim))
        for client in r.clients.values():
            client.update[entry] = 0
        liar = r.clients[_PARTY]
        liar.update[entry] = too_many = n * MAX_COUNT + 1
        liar.grid = CountGrid(MAX_COUNT_LIMIT)  # a site running code that skips its own check
        last = bed.round_stages(mode)[-1]
        others = {c for c in r.clients if c != _PARTY}
        driven = bed.run(r, absent={last: others} if silent else None)
        if driven.crashes:
            raise CheckFailed(f"crashed: {driven.crashes[0]!r}")
        when = "the others silent at the last stage" if silent else "every site answering"
        if driven.revealed is not None:
            got = r.observed(driven.revealed)
            shown = "nothing" if got is None else int(got[entry])
            raise CheckFailed(f"site {_PARTY} sent a count of {too_many} (> MAX_COUNT "
                              f"{MAX_COUNT}), {when}, and the round revealed a sum ({shown} at "
                              "that entry)")  # fmt: skip
        outcomes.append(f"{when}: nothing revealed ({driven.aborted})")
    return f"site {_PARTY}'s count of {too_many} (n * MAX_COUNT + 1, the others 0); " + "; ".join(
        outcomes
    )


def _bad_report(kind: str, data: bytes) -> bytes:
    message = wire.parse(data)
    values = message.array(0, dtype="<i8").astype(np.int64)
    if kind == "different":
        values[0] += 1
    else:
        values[0] = -1
    return wire.serialize(message.header, [values.astype("<i8")])


def _report(mode: str, kind: str, bed: AuditBed, rng: np.random.Generator, quick: bool) -> str:
    r = bed.round(mode)
    stage = bed.round_stages(mode)[-1]  # the aggregate's receipt

    def hook(direction: str, s: str, party: int, data: bytes) -> list[bytes] | None:
        if (direction, s, party) != ("up", stage, _PARTY):
            return None
        return [_bad_report(kind, data)]

    driven = bed.run(r, hook=hook)
    if driven.crashes:
        raise CheckFailed(f"crashed: {driven.crashes[0]!r}")
    errors = [d.error for d in driven.hooked()]
    if not errors:
        raise CheckFailed(f"the round never reached '{stage}': {driven.aborted}")
    what = f"site {_PARTY}'s report at '{stage}' with a {kind} count"
    if kind == "different":
        if driven.revealed is not None:
            raise CheckFailed(f"{what}: the round revealed a sum")
        return f"{what}: nothing revealed ({driven.aborted})"
    if not isinstance(errors[0], InvalidMessage):
        raise CheckFailed(f"{what}: {errors[0]!r}, not a typed rejection (InvalidMessage)")
    problem = r.mismatch(driven.revealed, r.clients)
    if problem is not None:
        raise CheckFailed(f"{what}: refused, but the round is not exact: "
                          f"{driven.aborted or problem}")  # fmt: skip
    return (f"{what}: {type(errors[0]).__name__}; the others' reports revealed the exact sum "
            f"over sites {sorted(r.clients)}")  # fmt: skip


for _mode in HE_COUNT_MODES:
    register(f"dropout/{_mode}", f"{_mode}: sampled dropouts at every stage",
             lambda bed, rng, quick, m=_mode: _he_dropouts(m, bed, rng, quick))  # fmt: skip
for _mode in COUNT_MODES:
    register(f"bounds/{_mode}", f"{_mode}: a count above MAX_COUNT reveals nothing",
             lambda bed, rng, quick, m=_mode: _bounds(m, bed, rng, quick))  # fmt: skip
for _mode in HE_COUNT_MODES:
    for _kind in REPORT_KINDS:
        register(
            f"report/{_mode}/{_kind}",
            f"{_mode}: a site's {_kind} report of the sum",
            lambda bed, rng, quick, m=_mode, k=_kind: _report(m, k, bed, rng, quick),
        )
