"""The protocol audits: named checks, each run against the real sessions of the installed
package (:mod:`fedshield.audit.bed`), each passing or failing with a detail that says what it saw.

Checks live in :data:`CHECKS` (add one with :func:`register`). A check is a function
``(bed, rng, quick) -> detail`` that raises :class:`CheckFailed` when the property it checks
does not hold; any other exception fails it too, as a crash. ``rng`` is seeded from the
audit's seed and the check's name, so each check is reproducible on its own.

- ``exact/<mode>``: the unmasked (``secagg``) or decrypted (``he``) aggregate equals the plain
  sum of the levels each site encoded, times its integer weight; ``plain``: the float sum; a
  count session (``*-counts``): the revealed counts equal the plain sum of the sites' counts.
- ``dropout/secagg``, ``dropout/secagg-counts``: random sites vanish at random stages; the
  round completes exactly over the survivors while the threshold and the consistency quorum
  hold, and aborts (typed, with nothing revealed) otherwise (``he`` count sessions:
  :mod:`fedshield.audit.counts`).
- ``uniform/secagg``: each masked upload, and the masked sum the server holds before
  unmasking, pass a chi-square test of uniformity over the ring (top and bottom 6 bits).
- ``no-key/<he mode>``: no secret key, decryptor, keyring or private key is reachable from the
  server's session objects, during and after a round and in the key setup
  (:mod:`fedshield.audit.keywalk`).
- ``reject/<mode>/<kind>``: a tampered, replayed (twice, or from an earlier round), truncated
  or oversized message gets a typed rejection, and the honest round completes exactly over
  the others (where a threshold ``he`` round cannot leave a site out, n-of-n or once its sum
  is fixed: the round ends, and the next one is exact).
"""

from __future__ import annotations

import fnmatch
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from fedshield import wire
from fedshield.audit.bed import COUNT_MODES, DIM, MODES, SITES, AuditBed, AuditRound, run_mode
from fedshield.audit.keywalk import reachable_secrets
from fedshield.crypto import ring
from fedshield.engine.dropout import DropoutPolicy
from fedshield.engine.runner import run_protocol
from fedshield.engine.transport import InProcessTransport
from fedshield.errors import ConfigError, FedshieldError

__all__ = [
    "CHECKS",
    "Check",
    "CheckFailed",
    "CheckResult",
    "Pattern",
    "drop",
    "register",
    "run_checks",
    "sampled_dropouts",
    "select",
]

CheckFn = Callable[[AuditBed, np.random.Generator, bool], str]


class CheckFailed(FedshieldError):
    """An audit found a property false; the message says what it saw."""


@dataclass(frozen=True)
class Check:
    """A named audit: ``run(bed, rng, quick)`` returns its detail or raises CheckFailed."""

    name: str
    about: str
    run: CheckFn


@dataclass(frozen=True)
class CheckResult:
    """A check's verdict, with what it saw and how long it took."""

    name: str
    about: str
    passed: bool
    detail: str
    seconds: float

    def as_dict(self) -> dict:
        """Plain data for ``audit.json``."""
        return {"name": self.name, "about": self.about, "passed": self.passed,
                "detail": self.detail, "seconds": round(self.seconds, 3)}  # fmt: skip


CHECKS: dict[str, Check] = {}


def register(name: str, about: str, run: CheckFn) -> Check:
    """Add a check to :data:`CHECKS` (the name must be new)."""
    if name in CHECKS:
        raise ValueError(f"an audit check named {name!r} is already registered")
    CHECKS[name] = Check(name, about, run)
    return CHECKS[name]


def select(patterns: Iterable[str] | None = None) -> list[Check]:
    """The checks whose names match any of ``patterns`` (shell-style; all when ``None``).

    Raises:
        ConfigError: a pattern matches no check.
    """
    if patterns is None:
        return list(CHECKS.values())
    chosen: dict[str, Check] = {}
    for pattern in patterns:
        found = [c for name, c in CHECKS.items() if fnmatch.fnmatchcase(name, pattern)]
        if not found:
            raise ConfigError(f"no audit check matches {pattern!r}; checks: {sorted(CHECKS)}")
        chosen.update((c.name, c) for c in found)
    return [c for c in CHECKS.values() if c.name in chosen]


def run_checks(
    bed: AuditBed, checks: Iterable[Check], *, quick: bool, seed: int = 0,
    on_step: Callable[[str], None] | None = None,
) -> list[CheckResult]:  # fmt: skip
    """Run ``checks`` on ``bed``; an exception fails its check (as a crash), never the run."""
    results = []
    for check in checks:
        if on_step is not None:
            on_step(check.name)
        rng = np.random.default_rng([seed, zlib.crc32(check.name.encode())])
        start = time.perf_counter()
        try:
            passed, detail = True, check.run(bed, rng, quick)
        except CheckFailed as exc:
            passed, detail = False, str(exc)
        except Exception as exc:  # a crash is a failed audit, with its cause
            passed, detail = False, f"crashed: {type(exc).__name__}: {exc}"
        results.append(CheckResult(check.name, check.about, passed, detail,
                                   time.perf_counter() - start))  # fmt: skip
    return results


# --- exact aggregation -----------------------------------------------------------------------
_FULL_SIZES = {"plain": (1, 5, 12), "plain-q8": (1, 5, 12), "secagg": (3, 5, 10),
               "he-shared": (2, 3, 6), "he-threshold": (2, 3),
               "he-threshold-t": (3, 4)}  # fmt: skip
_FULL_SIZES.update({mode: _FULL_SIZES[run_mode(mode)] for mode in COUNT_MODES})


def _exact(mode: str, bed: AuditBed, rng: np.random.Generator, quick: bool) -> str:
    sizes = (SITES[mode],) if quick else _FULL_SIZES[mode]
    for n in sizes:
        r = bed.round(mode, n=n)
        outcome = run_protocol(r.server, InProcessTransport(r.clients))
        problem = r.mismatch(outcome.revealed, r.clients)
        if problem is not None:
            raise CheckFailed(f"{n} sites: {outcome.aborted or problem}")
    what = "float sum" if mode.startswith("plain") else "sum of the weighted levels"
    what = "sum of the sites' counts" if mode in COUNT_MODES else what
    return f"{', '.join(map(str, sizes))} sites x {DIM} values: equals the plain {what}"


# --- dropouts --------------------------------------------------------------------------------
# One sampled pattern: the round, who vanishes at each stage, the sites whose input must be in
# the sum, whether the protocol must complete, and a label for the report.
Pattern = tuple[AuditRound, dict[str, list[int]], set[int], bool, str]


def sampled_dropouts(
    patterns: int, stages: Iterable[str], sample: Callable[[], Pattern]
) -> str:  # fmt: skip
    """Run ``patterns`` rounds drawn by ``sample`` through the real round runner with their
    sites vanishing as scheduled: where the protocol must complete, exactly over the sites the
    pattern names; elsewhere, with nothing revealed.

    Raises:
        CheckFailed: a round that should complete is not exact, or one that should abort
            revealed a sum.
    """
    completed, aborted, dropped_at = 0, 0, dict.fromkeys(stages, 0)
    for _ in range(patterns):
        r, schedule, survivors, enough, label = sample()
        outcome = run_protocol(r.server, InProcessTransport(r.clients),
                               dropout=DropoutPolicy(schedule=schedule))  # fmt: skip
        pattern = f"{label}, dropped {schedule}"
        if enough:
            problem = r.mismatch(outcome.revealed, survivors)
            if problem is not None:
                raise CheckFailed(f"{pattern}: {outcome.aborted or problem}")
            completed += 1
            for stage, gone in schedule.items():
                dropped_at[stage] += bool(gone)
        elif outcome.revealed is not None:
            raise CheckFailed(f"{pattern}: the protocol cannot complete, yet it revealed a sum")
        else:
            aborted += 1
    where = ", ".join(f"{stage} {count}" for stage, count in dropped_at.items())
    return (f"{completed + aborted} patterns: {completed} exact over their survivors (with "
            f"dropouts at {where}), {aborted} aborted with nothing revealed")  # fmt: skip


def drop(rng: np.random.Generator, alive: set[int]) -> list[int]:
    """0 to 2 of the ``alive`` sites, drawn to vanish at one stage (none, most often)."""
    size = min(len(alive), int(rng.choice([0, 0, 0, 0, 1, 1, 2])))
    return sorted(int(c) for c in rng.choice(sorted(alive), size, replace=False))


def _dropouts(mode: str, bed: AuditBed, rng: np.random.Generator, quick: bool) -> str:
    stages = bed.round_stages(mode)

    def sample() -> Pattern:
        n = int(rng.integers(3, 9))
        t = int(rng.integers(1, n // 2 + 2))  # up to the default, a majority
        r = bed.round(mode, n=n, threshold=t)
        schedule, survivors, enough = _dropout_pattern(r, n, t, rng, stages)
        return r, schedule, survivors, enough, f"n={n}, t={t}"

    detail = sampled_dropouts(60 if quick else 300, stages, sample)
    return f"{detail} below the threshold or quorum"


def _dropout_pattern(r, n: int, t: int, rng: np.random.Generator, stages) -> tuple:
    """``(schedule, survivors, enough)``: 0 to 2 sites gone at each stage, the sites whose
    masked input counts, and whether every stage keeps the threshold and ``consistency`` a
    quorum of signers (Bonawitz et al. 2017, the rounds' abort conditions)."""
    schedule, alive, enough, survivors = {}, set(range(n)), True, set()
    for stage in stages:
        schedule[stage] = drop(rng, alive)
        alive -= set(schedule[stage])
        enough &= len(alive) >= t
        if stage == "consistency":
            enough &= len(alive) >= r.server.config.quorum(n)
        if stage == "masked_input":
            survivors = set(alive)  # dropping later still counts the input
    return schedule, survivors, enough


# --- what the SecAgg+ server sees ------------------------------------------------------------
_CHI2_LIMIT = 120.0  # chi-square with 63 degrees of freedom: p < 1e-5 above this


def _chi2(values: np.ndarray, bits: int) -> float:
    worst = 0.0
    for shift in (bits - 6, 0):  # the top 6 bits, then the bottom 6
        bins = ((values >> np.uint64(shift)) & np.uint64(63)).astype(np.int64)
        counts = np.bincount(bins, minlength=64)
        expected = len(values) / 64
        worst = max(worst, float(((counts - expected) ** 2 / expected).sum()))
    return worst


def _uniform(bed: AuditBed, rng: np.random.Generator, quick: bool) -> str:
    r = bed.round("secagg", n=4, dim=20_000)
    uploads: dict[int, bytes] = {}
    held: list[np.ndarray] = []

    def capture(direction: str, stage: str, party: int, data: bytes) -> None:
        if direction == "up" and stage == "masked_input":
            uploads[party] = data
        if direction == "down" and stage == "consistency" and not held:
            held.append(np.array(r.server.masked_sum, copy=True))  # before any unmasking

    driven = bed.run(r, hook=capture)
    if driven.revealed is None or not held:
        raise CheckFailed(f"the round did not complete: {driven.aborted or driven.failure}")
    bits, length = r.server.bits, r.server.length
    views = {f"site {c}": ring.unpack(wire.parse(data).raw(3), length, bits)
             for c, data in uploads.items()}  # fmt: skip
    views["masked sum"] = held[0].astype(np.uint64)
    scores = {name: _chi2(values.astype(np.uint64), bits) for name, values in views.items()}
    bad = {name: round(s, 1) for name, s in scores.items() if s > _CHI2_LIMIT}
    if bad:
        raise CheckFailed(f"not uniform over Z_2^{bits} (chi-square, 63 df, limit "
                          f"{_CHI2_LIMIT:.0f}): {bad}")  # fmt: skip
    return (f"{len(views)} views of {length} ring values (Z_2^{bits}): chi-square at most "
            f"{max(scores.values()):.1f} (63 df; p < 1e-5 above {_CHI2_LIMIT:.0f})")  # fmt: skip


# --- no key on the he server -----------------------------------------------------------------
def _no_key(mode: str, bed: AuditBed, rng: np.random.Generator, quick: bool) -> str:
    r = bed.round(mode)
    found: list[str] = []
    walked = 0

    def walk(direction: str, stage: str, party: int, data: bytes) -> None:
        nonlocal walked
        if direction == "down" and party == 0:  # each stage, as the server holds it
            paths, count = reachable_secrets(r.server)
            found.extend(f"at '{stage}': {p}" for p in paths)
            walked = max(walked, count)

    driven = bed.run(r, hook=walk)
    if driven.revealed is None:
        raise CheckFailed(f"the round did not complete: {driven.aborted or driven.failure}")
    setup = bed.setup_servers.get((run_mode(mode), SITES[mode], DIM))
    after, _ = reachable_secrets(r.server)
    found += [f"after the round: {p}" for p in after]
    if setup is not None:
        found += [f"key setup: {p}" for p in reachable_secrets(setup, name="setup")[0]]
    control, _ = reachable_secrets(r.clients[0], name="site")
    if not control:
        raise CheckFailed("the walk found no key on a site either: it cannot be trusted")
    if found:
        raise CheckFailed(f"secret key material reachable from the server: {found[:3]}")
    return (f"none in up to {walked} objects reachable from the round's server at each stage, "
            f"nor from the key setup's; the walk does find a site's ({control[0]})")  # fmt: skip


for _mode in MODES:
    register(f"exact/{_mode}", f"{_mode}: the aggregate equals the plain sum",
             lambda bed, rng, quick, m=_mode: _exact(m, bed, rng, quick))  # fmt: skip
for _mode in ("secagg", "secagg-counts"):
    register(f"dropout/{_mode}", f"{_mode}: sampled dropouts at every stage",
             lambda bed, rng, quick, m=_mode: _dropouts(m, bed, rng, quick))  # fmt: skip
register("uniform/secagg", "secagg: the server's view is uniform over the ring", _uniform)
for _mode in [m for m in MODES if run_mode(m).startswith("he-")]:
    register(f"no-key/{_mode}", f"{_mode}: no secret key reachable from the server",
             lambda bed, rng, quick, m=_mode: _no_key(m, bed, rng, quick))  # fmt: skip
