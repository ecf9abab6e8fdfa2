"""The federations an audit drives: the real sessions of every mode, made through the protocol
registry, with every key made by the real key-setup sessions (the round driver:
:mod:`fedshield.audit.drive`).

Modes: ``plain`` (float32), ``plain-q8`` (8-bit levels with a float32 range per chunk),
``secagg`` (SecAgg+, integer weighting), ``he-shared`` (BFV, one key sealed to every site) and
``he-threshold`` (BFV, n-of-n key shares), ``he-threshold-t`` (BFV, any 2 of 3 sites
decrypt). Each mode's options are fixed and public (clip 1, 8-bit levels, 8-bit integer
weights against a largest weight of 15), so that the aggregate can be compared with the plain
sum of the levels each site encoded.

Count modes (:data:`COUNT_MODES`): the sessions of secure evaluation (docs/evaluation.md) that
sum each site's integer counts exactly, derived from a run mode's spec as the engine derives
them (``for_counts(MAX_COUNT)``): ``secagg-counts`` (SecAgg+ on the exact count grid),
``he-shared-counts``, ``he-threshold-counts`` and ``he-threshold-t-counts`` (the HE count sum
under the run's keys; each site reports the decrypted sum back). Each site's counts are
integers in ``[0, MAX_COUNT]``, both ends included; the revealed counts must equal their sum.

A *variant* replaces one session class (``variants={"secagg.client": MyClient}``): it is built
with the keyword arguments the registry would give the real class, so a subclass of the real
session (a broken one, in the tests) is audited exactly like the real one.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from fedshield.audit.drive import Delivery, Driven, Hook, drive
from fedshield.crypto.ring import integer_weight
from fedshield.engine.runner import run_protocol
from fedshield.engine.secure_eval import MAX_COUNT
from fedshield.engine.transport import InProcessTransport
from fedshield.errors import ConfigError
from fedshield.protocols.base import ClientSession, Revealed, ServerSession
from fedshield.protocols.registry import ProtocolSpec, get_protocol
from fedshield.protocols.roster import Roster

__all__ = [
    "COUNT_MODES",
    "DIM",
    "FUZZ_MODES",
    "MODES",
    "SESSION_TYPES",
    "SETUP_MODES",
    "SITES",
    "AuditBed",
    "AuditRound",
    "Delivery",
    "Driven",
    "drive",
]

# the count sessions of secure evaluation, each named after the run mode it derives from
COUNT_MODES = ("secagg-counts", "he-shared-counts", "he-threshold-counts",
               "he-threshold-t-counts")  # fmt: skip
MODES = ("plain", "plain-q8", "secagg", "he-shared", "he-threshold", "he-threshold-t",
         *COUNT_MODES)  # fmt: skip
# he's one-time key setups
SETUP_MODES = ("he-shared-keys", "he-threshold-keys", "he-threshold-t-keys")
FUZZ_MODES = MODES + SETUP_MODES
SESSION_TYPES = tuple(f"{mode}.{side}" for mode in MODES for side in ("server", "client"))
SITES = {"plain": 5, "plain-q8": 5, "secagg": 5, "he-shared": 3, "he-threshold": 3,
         "he-threshold-t": 3}  # fmt: skip
SITES.update({mode: SITES[mode.removesuffix("-counts")] for mode in COUNT_MODES})
KEY_THRESHOLD = 2  # he-threshold-t: any 2 of the 3 sites decrypt
DIM = 256  # values per update
MAX_WEIGHT = 15.0
_OPTIONS = {"max_weight": MAX_WEIGHT, "clip": 1.0, "quant_bits": 8}


def run_mode(mode: str) -> str:
    """The run mode a count session derives from (``he-shared-counts``: ``he-shared``);
    ``mode`` itself for any other."""
    return mode.removesuffix("-counts") if mode in COUNT_MODES else mode


def base_spec(mode: str) -> ProtocolSpec:
    """The registry's protocol for ``mode``, with the audit's public options."""
    if mode == "plain":
        return get_protocol("plain")
    if mode == "plain-q8":  # per-chunk 8-bit levels, with a float32 (low, step) per chunk
        return get_protocol("plain", quant_bits=8)
    if mode == "secagg":
        return get_protocol("secagg", secagg_weighting="integer", **_OPTIONS)
    if mode in ("he-shared", "he-threshold", "he-threshold-t"):
        keys = "shared" if mode == "he-shared" else "threshold"
        threshold = KEY_THRESHOLD if mode == "he-threshold-t" else None
        return get_protocol("he", he_weighting="integer", he_keys=keys, threshold=threshold,
                            **_OPTIONS)  # fmt: skip
    raise ConfigError(f"unknown audit mode {mode!r}; choose one of {MODES}")


@dataclass
class AuditRound:
    """One round's sessions, not yet driven, and what their aggregate must be."""

    mode: str
    server: ServerSession
    clients: dict[int, ClientSession]
    dim: int

    def expected(self, survivors) -> np.ndarray:
        """The plain aggregate of ``survivors``: the weighted float sum of what each sent
        (``plain``: its update, or its dequantized levels), or the sum of each site's encoded
        levels times its integer weight, then the weights' sum; a count session: the sum of
        the sites' counts (int64)."""
        if self.mode in COUNT_MODES:
            zero = np.zeros(self.dim, np.int64)
            return sum((self.clients[c].update.astype(np.int64) for c in survivors), zero)
        if self.mode.startswith("plain"):
            return sum(
                (float(self.clients[c].weight) * self.clients[c].sent.astype(np.float64)
                 for c in survivors), np.zeros(self.dim),
            )  # fmt: skip
        total = np.zeros(self.dim + 1, dtype=np.int64)
        for c in survivors:
            client = self.clients[c]
            config = client.config if hasattr(client, "config") else client.plan.config
            w = integer_weight(client.weight, config.max_weight, config.weight_bits)
            levels = client.grid.encode(client.update, 1.0, seed=client.quant_seed)[0]
            total[: self.dim] += w * levels.astype(np.int64)
            total[self.dim] += w
        return total

    def observed(self, revealed: Revealed) -> np.ndarray | None:
        """What the round unmasked (``secagg``), decrypted (``he``: the sites' level sum, which
        every site that decoded must agree on) or summed (``plain``); ``None`` if nothing. A
        count session: the counts it revealed (unmasked, or as the sites reported them)."""
        if self.mode.startswith("plain") or self.mode in COUNT_MODES:
            return None if revealed.weighted_sum is None else np.asarray(revealed.weighted_sum)
        if self.mode == "secagg":
            found = getattr(self.server, "unmasked", None)
            return None if found is None else found.astype(np.int64)
        sums = [c.level_sum for c in self.clients.values() if c.level_sum is not None]
        if any(not np.array_equal(sums[0], other) for other in sums[1:]):
            return None
        return sums[0].astype(np.int64) if sums else None

    def mismatch(self, revealed: Revealed | None, survivors) -> str | None:
        """Why the round's aggregate is not the plain one of ``survivors`` (``None``: it is;
        a key setup: when every one of ``survivors`` installed the key)."""
        if revealed is None:
            return "the round revealed nothing"
        if tuple(revealed.contributors) != tuple(sorted(survivors)):
            return f"contributors {list(revealed.contributors)}, expected {sorted(survivors)}"
        if self.mode in SETUP_MODES:
            return None
        got, want = self.observed(revealed), self.expected(survivors)
        if got is None:
            return "no aggregate to compare (or the sites decrypted different sums)"
        if got.shape != want.shape:
            return f"aggregate of shape {got.shape}, expected {want.shape}"
        if self.mode.startswith("plain"):
            worst = float(np.max(np.abs(got - want)))
            return None if worst <= 1e-9 * max(1.0, float(np.max(np.abs(want)))) else (
                f"largest difference {worst:.3g} from the float sum"
            )  # fmt: skip
        wrong = np.flatnonzero(got != want)
        if wrong.size:
            return f"{wrong.size} of {want.size} summed levels differ (first at {wrong[0]})"
        return None


class AuditBed:
    """Rosters, identities and HE keys for every mode, made once, and rounds on them.

    Args:
        variants: session classes to use in place of the registry's, by session type
            (``"plain.server"``, ``"secagg.client"``... see :data:`SESSION_TYPES`); each is
            built with the real class's keyword arguments.
        seed: seeds the updates and weights (test data, not secrets: every key stays fresh).

    Example:
        >>> bed = AuditBed()
        >>> r = bed.round("plain")
        >>> r.mismatch(bed.run(r).revealed, r.clients) is None
        True
    """

    def __init__(self, *, variants: Mapping[str, type] | None = None, seed: int = 0) -> None:
        unknown = sorted(set(variants or {}) - set(SESSION_TYPES))
        if unknown:
            raise ConfigError(f"unknown session types {unknown}; choose from {SESSION_TYPES}")
        self.variants = dict(variants or {})
        self.rng = np.random.default_rng(seed)
        self.rounds = itertools.count(1)  # a threshold site takes one input per round, ever
        self._rosters: dict[int, tuple[Roster, dict]] = {}
        self._specs: dict[tuple[str, int, int], ProtocolSpec] = {}
        self.setup_servers: dict[tuple[str, int, int], ServerSession] = {}

    def roster(self, n: int) -> tuple[Roster, dict]:
        """The roster of sites ``0..n-1`` and their identities (long-term: made once)."""
        if n not in self._rosters:
            self._rosters[n] = Roster.enrol(range(n), min_sites=1)
        return self._rosters[n]

    def spec(self, mode: str, n: int, dim: int = DIM) -> ProtocolSpec:
        """``mode``'s protocol bound to the roster of ``n`` sites; under ``he``, after the key
        setup ran through its real sessions (its server kept in :attr:`setup_servers`)."""
        key = (mode, n, dim)
        if key not in self._specs and mode in COUNT_MODES:  # derived from the run's spec
            self._specs[key] = self.spec(run_mode(mode), n, dim).for_counts(MAX_COUNT)
        if key not in self._specs:
            roster, identities = self.roster(n)
            spec = base_spec(mode).with_roster(roster)
            setup = spec.key_setup(clients=list(range(n)), dim=dim)
            if setup is not None:
                server = setup.server()
                sites = {c: setup.client(c, identities[c]) for c in range(n)}
                outcome = run_protocol(server, InProcessTransport(sites))
                if outcome.revealed is None:
                    raise ConfigError(f"{mode}: the key setup failed ({outcome.aborted})")
                self.setup_servers[key] = server
                spec = setup.bind({c: site.keyring for c, site in sites.items()})
            self._specs[key] = spec
        return self._specs[key]

    def round(
        self, mode: str, *, n: int | None = None, dim: int = DIM, threshold: int | None = None
    ) -> AuditRound:
        """Fresh sessions of one round of ``mode`` among ``n`` sites (default :data:`SITES`);
        ``threshold``: SecAgg+'s Shamir threshold in place of the default. A mode of
        :data:`SETUP_MODES`: the sessions of a fresh key setup for the mode it names."""
        if mode in SETUP_MODES:
            return self._setup_round(mode, dim)
        n = SITES[mode] if n is None else n
        spec = self.spec(mode, n, dim)
        if threshold is not None:
            spec = replace(spec, config=replace(spec.config, threshold=threshold))
        number, ids = next(self.rounds), list(range(n))
        server = self._server(mode, spec, round=number, clients=ids, dim=dim)
        identities, clients = self.roster(n)[1], {}
        for c in ids:
            update, weight = self._input(mode, c, number, dim)
            clients[c] = self._client(mode, spec, client_id=c, identity=identities[c],
                                      round=number, update=update, weight=weight,
                                      quant_seed=1000 * number + c)  # fmt: skip
        return AuditRound(mode, server, clients, dim)

    def _input(self, mode: str, c: int, number: int, dim: int) -> tuple[np.ndarray, float]:
        """Site ``c``'s update and weight (a count session: counts in ``[0, MAX_COUNT]``, both
        ends included, and weight 1)."""
        if mode in COUNT_MODES:
            counts = self.rng.integers(0, MAX_COUNT + 1, dim)
            counts[self.rng.integers(0, dim, 2)] = (0, MAX_COUNT)
            return counts.astype(np.float32), 1.0
        update = self.rng.uniform(-1.0, 1.0, dim).astype(np.float32)
        return update, float(1 + (3 * c + number) % 15)

    def _setup_round(self, mode: str, dim: int) -> AuditRound:
        base = mode.removesuffix("-keys")
        n = SITES[base]
        setup = self.spec(base, n, dim).key_setup(clients=list(range(n)), dim=dim)
        identities = self.roster(n)[1]
        clients = {c: setup.client(c, identities[c]) for c in range(n)}
        return AuditRound(mode, setup.server(), clients, dim)

    def round_stages(self, mode: str) -> list[str]:
        """The stages an honest round of ``mode`` goes through (``secagg``'s ``expel`` only
        comes with a cheater or an unrecoverable key, so not here)."""
        stages: list[str] = []

        def note(direction: str, stage: str, party: int, data: bytes) -> None:
            if stage not in stages:
                stages.append(stage)

        self.run(self.round(mode), hook=note)
        return stages

    def run(self, r: AuditRound, *, hook: Hook | None = None, absent=None) -> Driven:
        """Drive ``r`` (see :func:`drive`)."""
        return drive(r.server, r.clients, hook=hook, absent=absent)

    def _server(self, mode: str, spec, **kwargs) -> ServerSession:
        cls = self.variants.get(f"{mode}.server")
        if cls is None:
            return spec.server(**kwargs)
        family, roster = _family(mode), getattr(getattr(spec, "run", spec), "roster", None)
        if family == "plain":
            return cls(**kwargs, payload_format=spec.format)
        if family == "secagg":
            return cls(**kwargs, config=spec.config, roster=roster)
        plan = spec.plan(kwargs["dim"]) if mode in COUNT_MODES else spec.plan
        extra = {"roster": roster} if family == "he-threshold" else {}
        return cls(**kwargs, plan=plan, **extra)

    def _client(self, mode: str, spec, *, client_id: int, identity, **kwargs) -> ClientSession:
        cls = self.variants.get(f"{mode}.client")
        if cls is None:
            return spec.client(client_id=client_id, identity=identity, **kwargs)
        family, roster = _family(mode), getattr(getattr(spec, "run", spec), "roster", None)
        if family == "plain":
            return cls(client_id=client_id, **kwargs, payload_format=spec.format)
        if family == "secagg":
            return cls(client_id=client_id, **kwargs, config=spec.config, roster=roster,
                       identity=identity)  # fmt: skip
        if mode in COUNT_MODES:  # the run's key under the count plan
            keyring = spec.keyring(client_id, kwargs["update"].size)
        else:
            keyring = spec.keyrings[client_id]
        extra = {"roster": roster, "identity": identity} if family == "he-threshold" else {}
        return cls(client_id=client_id, **kwargs, keyring=keyring, **extra)


def _family(mode: str) -> str:
    """The session classes ``mode`` uses: ``plain``, ``secagg``, ``he-shared`` or
    ``he-threshold`` (with any key threshold)."""
    base = run_mode(mode)
    return {"plain-q8": "plain", "he-threshold-t": "he-threshold"}.get(base, base)
