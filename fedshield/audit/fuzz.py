"""``fedshield audit --fuzz N``: randomly mutated messages fed into every session type.

Each mutation replaces one message of a fresh round, on its way into one session: a server's
``receive`` (a client's answer, ``up``) or a client's ``handle`` (the server's message,
``down``), at a stage an honest round uses. The round then goes on with every other party
honest. Counted per mutation:

- **crash**: the session (or any later step of the round) raised an exception that is not one
  of fedshield's typed errors (:class:`~fedshield.errors.FedshieldError`). Must be 0.
- **escaped**: a server raised a typed error that the round runner does not handle (neither
  :class:`~fedshield.errors.InvalidMessage` nor :class:`~fedshield.errors.ProtocolAbort`): it
  would end the server's round loop. Must be 0.
- **rejected**: the session refused the message with a typed error (its sender, or the
  client, is then out of the round).
- **accepted**: the session took the message: the mutation changed only what no check can see
  (a masked value, a ciphertext coefficient, a float that is still finite...). What that did
  shows in the round's outcome.
- **completed** / **aborted**: the honest round's outcome afterwards. Where the protocol
  tolerates a dropout (``plain``, ``plain-q8``, ``secagg`` at 5 sites, ``he-shared``), a
  rejected message must leave the round completing (**not completed** otherwise: must be
  0); ``he-threshold`` decrypts with every site's share, so a rejected site ends the round by
  design, and ``he-threshold-t`` (2 of 3) leaves out only sites refused at ``input``. The
  count sessions (``*-counts``) tolerate what their run mode does and, under threshold ``he``,
  a refused report of the decrypted sum too (the other sites' reports reveal it).
- **inexact**: the round completed, but its aggregate is not the plain one of its
  contributors (an accepted change that stayed within the public range: no integrity covers
  it). After a *rejected* message it is **corrupted** instead: the rejected message left a
  trace in the sum. Must be 0.

Mutations (:mod:`fedshield.audit.mutate`) take turns, as do the twenty-six session types: the
server and client of each round mode (the count sessions included) and of ``he``'s three key
setups (:data:`~fedshield.audit.bed.FUZZ_MODES`; a key setup needs every site, so a rejection
ends it, by design); stages, parties and positions are drawn from a generator seeded by
``seed``.
The protocols' own keys stay fresh (they come from the OS), so a rerun with the same seed
mutates the same places of messages of the same layout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from fedshield.audit.bed import FUZZ_MODES, AuditBed
from fedshield.audit.mutate import MUTATIONS, mutate
from fedshield.errors import ConfigError, FedshieldError, InvalidMessage, ProtocolAbort

__all__ = ["TOLERANT", "FuzzCounts", "FuzzReport", "fuzz", "tolerates"]

# one rejected party, and the round goes on
TOLERANT = frozenset({"plain", "plain-q8", "secagg", "he-shared", "secagg-counts",
                      "he-shared-counts"})  # fmt: skip
_TOLERANT_STAGES = {
    "he-threshold-t": frozenset({"input"}),  # t of n: before the sum is fixed
    # a count session: any one site's report of the decrypted sum reveals it
    "he-threshold-counts": frozenset({"aggregate"}),
    "he-threshold-t-counts": frozenset({"input", "aggregate"}),
}


def tolerates(mode: str, stage: str) -> bool:
    """Whether a round of ``mode`` goes on without one party refused at ``stage``."""
    return mode in TOLERANT or stage in _TOLERANT_STAGES.get(mode, ())


_EXAMPLES = 10


@dataclass
class FuzzCounts:
    """Outcomes of a number of mutations (see the module's docstring)."""

    mutations: int = 0
    crashes: int = 0
    escaped: int = 0
    rejected: int = 0
    accepted: int = 0
    completed: int = 0
    inexact: int = 0
    aborted: int = 0
    not_completed: int = 0
    corrupted: int = 0

    def add(self, other: FuzzCounts) -> None:
        """Add ``other``'s counts to these."""
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class FuzzReport:
    """The fuzzer's counts: in all, per session type and stage, per mutation; the typed
    errors that rejected messages; the first crashes; and whether an honest round of each
    mode completed exactly after all the mutations."""

    seed: int
    total: FuzzCounts = field(default_factory=FuzzCounts)
    by_target: dict[str, FuzzCounts] = field(default_factory=dict)
    by_mutation: dict[str, FuzzCounts] = field(default_factory=dict)
    rejections: dict[str, int] = field(default_factory=dict)
    crash_examples: list[dict] = field(default_factory=list)
    honest_after: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """No crash, nothing escaped, every tolerated rejection left the round completing
        and no trace in its sum, and every honest round afterwards was exact."""
        t = self.total
        ok_after = all(v == "exact" for v in self.honest_after.values())
        clean = t.crashes == t.escaped == t.not_completed == t.corrupted == 0
        return clean and ok_after

    def as_dict(self) -> dict:
        """Plain data for ``audit.json``."""
        return {
            "seed": self.seed,
            "passed": self.passed,
            "seconds": round(self.seconds, 2),
            "total": asdict(self.total),
            "by_target": {k: asdict(v) for k, v in sorted(self.by_target.items())},
            "by_mutation": {k: asdict(v) for k, v in self.by_mutation.items()},
            "rejections": dict(sorted(self.rejections.items())),
            "crash_examples": self.crash_examples,
            "honest_after": self.honest_after,
        }


def fuzz(
    n: int,
    *,
    seed: int = 0,
    bed: AuditBed | None = None,
    modes: Iterable[str] = FUZZ_MODES,
    on_step: Callable[[str], None] | None = None,
) -> FuzzReport:
    """Feed ``n`` mutated messages into the sessions of ``modes`` (round-robin over their
    server and client sessions and over the mutations) and count the outcomes.

    Raises:
        ConfigError: ``n`` negative or an unknown mode.
    """
    if n < 0:
        raise ConfigError(f"--fuzz takes a number of mutations >= 0, got {n}")
    modes = tuple(modes)
    if unknown := sorted(set(modes) - set(FUZZ_MODES)):
        raise ConfigError(f"unknown modes {unknown}; choose from {FUZZ_MODES}")
    start, bed = time.perf_counter(), bed or AuditBed(seed=seed)
    rng = np.random.default_rng([seed, 0xF022])  # the schedule: targets, stages, parties
    report = FuzzReport(seed=seed)
    targets = {mode: _honest_targets(bed, mode) for mode in modes} if n else {}
    kinds = [(m, d) for m in modes for d in ("up", "down") if targets.get(m, {}).get(d)]
    names = list(MUTATIONS)
    for i in range(n if kinds else 0):
        mode, direction = kinds[i % len(kinds)]
        mutation = names[(i // len(kinds)) % len(names)]
        options = targets[mode][direction]
        stage, parties = options[int(rng.integers(0, len(options)))]
        party = parties[int(rng.integers(0, len(parties)))]
        if on_step is not None:
            on_step(f"fuzz {mode} {'server' if direction == 'up' else 'client'} {stage}")
        mutation_rng = np.random.default_rng([seed, 0xF022, i])  # apart from the schedule
        _one(bed, report, mutation_rng, mode=mode, direction=direction, stage=stage, party=party,
             mutation=mutation)  # fmt: skip
    for mode in modes if n else ():
        r = bed.round(mode)
        driven = bed.run(r)
        report.honest_after[mode] = _verdict(r, driven)
    report.seconds = time.perf_counter() - start
    return report


def _verdict(r, driven) -> str:
    if driven.crashes or driven.failure is not None:
        return f"failed: {driven.failure or driven.crashes[0]!r}"
    mismatch = r.mismatch(driven.revealed, r.clients)
    return "exact" if mismatch is None else f"not exact: {driven.aborted or mismatch}"


def _honest_targets(bed: AuditBed, mode: str) -> dict[str, list[tuple[str, list[int]]]]:
    """The (stage, parties) an honest round of ``mode`` delivers messages to, per direction."""
    seen: dict[tuple[str, str], list[int]] = {}

    def record(direction: str, stage: str, party: int, data: bytes) -> None:
        seen.setdefault((direction, stage), []).append(party)

    bed.run(bed.round(mode), hook=record)
    out: dict[str, list[tuple[str, list[int]]]] = {"up": [], "down": []}
    for (direction, stage), parties in seen.items():
        out[direction].append((stage, sorted(set(parties))))
    return out


def _one(bed: AuditBed, report: FuzzReport, rng, *, mode, direction, stage, party, mutation):
    """One mutated message in one fresh round; its outcome into ``report``."""
    r = bed.round(mode)
    fired: list[bytes] = []

    def hook(d: str, s: str, p: int, data: bytes) -> list[bytes] | None:
        if fired or (d, s, p) != (direction, stage, party):
            return None
        fired.append(mutate(mutation, data, rng))
        return fired

    driven = bed.run(r, hook=hook)
    counts = FuzzCounts(mutations=1)
    hooked = driven.hooked()
    error = hooked[0].error if hooked else None
    if hooked and error is None:
        counts.accepted = 1
    elif isinstance(error, FedshieldError):
        counts.rejected = 1
        name = type(error).__name__
        report.rejections[name] = report.rejections.get(name, 0) + 1
        if direction == "up" and not isinstance(error, InvalidMessage | ProtocolAbort):
            counts.escaped = 1
    failure = driven.failure
    if isinstance(failure, FedshieldError) and not isinstance(failure, ProtocolAbort):
        counts.escaped = 1
    crashes = driven.crashes
    counts.crashes = int(bool(crashes))
    counts.completed = int(driven.revealed is not None)
    counts.aborted = 1 - counts.completed
    if counts.rejected and tolerates(mode, stage) and driven.revealed is None:
        counts.not_completed = 1
    if driven.revealed is not None and r.mismatch(driven.revealed, driven.revealed.contributors):
        counts.corrupted, counts.inexact = counts.rejected, 1 - counts.rejected
    side = "server" if direction == "up" else "client"
    for key, table in ((f"{mode}.{side}/{stage}", report.by_target),
                       (mutation, report.by_mutation)):  # fmt: skip
        table.setdefault(key, FuzzCounts()).add(counts)
    report.total.add(counts)
    if (crashes or counts.escaped or counts.not_completed or counts.corrupted) and len(
        report.crash_examples
    ) < _EXAMPLES:
        problem = crashes[0] if crashes else failure or error
        report.crash_examples.append({
            "session": f"{mode}.{side}", "stage": stage, "party": party, "mutation": mutation,
            "error": f"{type(problem).__name__}: {problem}"[:300], "round": driven.aborted,
        })  # fmt: skip
