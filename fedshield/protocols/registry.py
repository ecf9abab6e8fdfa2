"""The protocols by name: one small spec class each, with its options bound.

A spec makes the two sessions of a round (``server(...)``, ``client(...)``) and says what
else the protocol needs: ``he`` a one-time key setup (:meth:`ProtocolSpec.key_setup`), which a
transport runs (the in-process engine, or the Flower grid). Register a new protocol with
:func:`register`; wire ids live in :mod:`fedshield.protocols.ids`.

Example:
    >>> spec = get_protocol("secagg", max_weight=120.0)
    >>> spec.name, spec.stages[0]
    ('secagg', 'advertise_keys')
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

from fedshield._validate import check_instance
from fedshield.crypto.ddg import DiscreteGaussianEncoding
from fedshield.crypto.identity import Identity
from fedshield.errors import ConfigError
from fedshield.protocols.base import ClientSession, ServerSession
from fedshield.protocols.he import (
    HEClient,
    HEConfig,
    HEKeyring,
    HEPlan,
    HEServer,
    plan_for,
)
from fedshield.protocols.he.setup import KEY_HOLDER, KeySetup
from fedshield.protocols.he.threshold import ThresholdClient, ThresholdServer
from fedshield.protocols.ids import ProtocolId
from fedshield.protocols.plain import PlainClient, PlainFormat, PlainServer
from fedshield.protocols.ranges import TensorRanges
from fedshield.protocols.roster import Roster
from fedshield.protocols.secagg import SecAggClient, SecAggConfig, SecAggServer

__all__ = [
    "DEFAULT_QUANT_BITS",
    "KEY_HOLDER",
    "MODEL_BROADCAST",
    "PROTOCOLS",
    "HESpec",
    "KeySetup",
    "PlainSpec",
    "ProtocolSpec",
    "SecAggSpec",
    "get_protocol",
    "register",
]

MODEL_BROADCAST = ProtocolId.MODEL_BROADCAST


class ProtocolSpec:
    """A protocol with its options bound: makes the server and client sessions of a round.

    ``server(round=, clients=, dim=)``; ``client(client_id=, round=, update=, weight=,
    quant_seed=, indices=None)``; both take ``ranges=`` (the round's
    :class:`~fedshield.protocols.ranges.TensorRanges`) when :attr:`adaptive`.
    """

    name: ClassVar[str]
    stages: ClassVar[tuple[str, ...]]
    default_quant_bits: ClassVar[int | None] = 8

    def server(self, *, round: int, clients: list[int], dim: int) -> ServerSession:
        raise NotImplementedError

    def client(self, **kwargs) -> ClientSession:
        raise NotImplementedError

    def describe(self) -> dict:
        """The bound options, as plain data."""
        raise NotImplementedError

    @property
    def adaptive(self) -> bool:
        """Whether each round's sessions take per-tensor ranges (no fixed clip)."""
        return False

    def key_setup(self, *, clients: list[int], dim: int, tensors: int = 0) -> KeySetup | None:
        """What must run once before the first round (``None``: nothing); ``tensors``: how
        many tensors the exchanged vector holds (adaptive ranges)."""
        return None

    def pinned_parameters(self) -> dict:
        """What a roster pins of this protocol: its name and its bound options."""
        return {"protection": self.name, **self.describe()}

    def min_sites(self, n: int) -> int:
        """The fewest sites a round of this protocol may list in a federation of ``n`` (the
        roster pins it): 1 unless the protocol's privacy needs more."""
        return 1

    def with_roster(self, roster: Roster) -> ProtocolSpec:
        """The same protocol checking every site against ``roster`` (the federation's ids and
        identity keys). ``plain`` has nothing to sign and ignores it."""
        check_instance("roster", roster, Roster, "Roster.enrol or Roster.load")
        if not hasattr(self, "roster"):
            return self
        return replace(self, roster=roster)  # type: ignore[type-var]

    def with_noise(self, encoding: DiscreteGaussianEncoding) -> ProtocolSpec:
        """The same protocol summing distributed DP's noisy levels (:mod:`fedshield.crypto.ddg`)
        with every site's weight 1, in place of quantized updates (``secagg``, ``he`` BFV)."""
        check_instance("encoding", encoding, DiscreteGaussianEncoding)
        config = getattr(self, "config", None)
        if not hasattr(config, "noise"):
            raise ConfigError(
                f"distributed DP adds its noise inside secure aggregation or HE (BFV), not under "
                f"{self.name}: use --protect secagg or he, or --dp-mode central or local"
            )
        return replace(self, config=replace(config, noise=encoding, weight_bits=0))  # type: ignore

    def for_counts(self, max_count: int) -> ProtocolSpec | None:
        """The protocol's session that sums integer counts of at most ``max_count`` exactly
        (evaluation summaries, :mod:`fedshield.engine.secure_eval`), with this spec's roster,
        threshold, neighbours, colluders and pinned minimum; ``None`` where the protocol has
        none (``plain``; ``he`` under CKKS or before its key setup), and the counts are summed
        in the clear."""
        return None

    def with_topk(self, k: int) -> ProtocolSpec:
        """The same protocol carrying ``k`` (index, value) pairs per client (``plain`` only)."""
        raise ConfigError(
            f"top-k sparsification cannot run under {self.name}: every client keeps different "
            "indices, so the protected vectors would not line up (the sum needs every index) "
            "and the indices themselves would leak which parameters moved most. Use randk "
            "(the round's shared seed picks the same indices at every client) or plain."
        )


PROTOCOLS: dict[str, type[ProtocolSpec]] = {}


def register(spec: type[ProtocolSpec]) -> type[ProtocolSpec]:
    """Class decorator: make ``spec`` available to :func:`get_protocol` by its ``name``."""
    if spec.name in PROTOCOLS:
        raise ValueError(f"a protocol named {spec.name!r} is already registered")
    PROTOCOLS[spec.name] = spec
    return spec


@register
@dataclass(frozen=True)
class PlainSpec(ProtocolSpec):
    """``plain``: the server sees each update (float32, per-chunk quantized, or top-k)."""

    name: ClassVar[str] = "plain"
    stages: ClassVar[tuple[str, ...]] = PlainServer.stages
    default_quant_bits: ClassVar[int | None] = None  # float32 on the wire
    format: PlainFormat = field(default_factory=PlainFormat)

    @classmethod
    def from_options(cls, *, quant_bits: int | None = None, **_ignored) -> PlainSpec:
        try:
            return cls(PlainFormat(quant_bits=quant_bits))
        except ValueError as exc:
            raise ConfigError(f"plain: {exc}") from None

    def server(self, *, round: int, clients: list[int], dim: int) -> ServerSession:
        return PlainServer(round=round, clients=clients, dim=dim, payload_format=self.format)

    def client(self, *, identity: Identity | None = None, **kwargs) -> ClientSession:
        return PlainClient(payload_format=self.format, **kwargs)

    def describe(self) -> dict:
        return {"quant_bits": self.format.quant_bits}

    def with_topk(self, k: int) -> PlainSpec:
        return replace(self, format=replace(self.format, k=k))


@register
@dataclass(frozen=True)
class SecAggSpec(ProtocolSpec):
    """``secagg``: SecAgg+; the server learns only the weighted sum of the survivors."""

    name: ClassVar[str] = "secagg"
    stages: ClassVar[tuple[str, ...]] = SecAggServer.stages
    config: SecAggConfig
    roster: Roster | None = None  # set by with_roster before the first round

    @classmethod
    def from_options(
        cls, *, max_weight: float, clip: float | None, quant_bits: int | None, threshold=None,
        neighbours=None, secagg_weighting: str = "fraction", sites: int | None = None,
        colluders: int | None = None, **_ignored,
    ) -> SecAggSpec:  # fmt: skip
        try:
            config = SecAggConfig(
                clip=clip,
                quant_bits=cls.default_quant_bits if quant_bits is None else quant_bits,
                max_weight=max_weight,
                threshold=threshold,
                neighbours=neighbours,
                weighting=secagg_weighting,
                colluders=colluders,
            )
            if sites is not None:  # pin the round size to the federation's threshold
                config = replace(config, min_clients=config.threshold_for(sites))
        except ValueError as exc:
            raise ConfigError(f"secagg: {exc}") from None
        return cls(config)

    @property
    def adaptive(self) -> bool:
        c = self.config
        return c.clip is None and c.noise is None and c.counts is None

    def for_counts(self, max_count: int) -> SecAggSpec:
        # a fixed clip keeps the grid's digits sane; it shapes nothing (CountGrid sends counts)
        config = replace(self.config, counts=max_count, weight_bits=0, noise=None,
                         clip=self.config.clip or 1.0)  # fmt: skip
        return replace(self, config=config)

    def min_sites(self, n: int) -> int:
        return max(self.config.min_clients, self.config.threshold_for(n))

    def server(
        self, *, round: int, clients: list[int], dim: int, ranges: TensorRanges | None = None
    ) -> ServerSession:
        return SecAggServer(round=round, clients=clients, dim=dim, config=self.config,
                            roster=self._roster(), ranges=ranges)  # fmt: skip

    def client(self, *, identity: Identity | None = None, **kwargs) -> ClientSession:
        if identity is None:
            raise ConfigError("secagg: a site needs its identity key (Identity) to take part")
        return SecAggClient(config=self.config, roster=self._roster(), identity=identity,
                            **kwargs)  # fmt: skip

    def _roster(self) -> Roster:
        if self.roster is None:
            raise ConfigError(
                "secagg: enrol the sites first (Roster.enrol or Roster.load, then "
                "spec.with_roster(roster)): every round key is signed by a roster member"
            )
        return self.roster

    def describe(self) -> dict:
        c = self.config
        return {
            "clip": "adaptive" if c.clip is None else c.clip,
            "quant_bits": c.quant_bits,
            "threshold": c.threshold,
            "neighbours": c.neighbours,
            "colluders": c.colluders,
            "max_weight": c.max_weight,
            "weighting": c.weighting,
            "min_clients": c.min_clients,
            **({"dp_noise": c.noise.describe()} if c.noise else {}),
        }


@register
@dataclass(frozen=True)
class HESpec(ProtocolSpec):
    """``he``: packed BFV or CKKS; the server adds ciphertexts, the sites decrypt the sum."""

    name: ClassVar[str] = "he"
    stages: ClassVar[tuple[str, ...]] = HEServer.stages
    config: HEConfig
    plan: HEPlan | None = None  # set by the key setup
    roster: Roster | None = None  # set by with_roster before the key setup
    keyrings: dict[int, HEKeyring] = field(default_factory=dict)

    @classmethod
    def from_options(
        cls, *, max_weight: float, clip: float | None, quant_bits: int | None,
        he_scheme: str = "bfv",
        he_weighting: str = "fraction", he_keys: str = "shared", threshold=None, **_ignored,
    ) -> HESpec:  # fmt: skip
        bits = cls.default_quant_bits if quant_bits is None else quant_bits
        threshold = threshold if he_keys == "threshold" else None  # shared keys: no threshold
        return cls(HEConfig(scheme=he_scheme, clip=clip, quant_bits=bits, keys=he_keys,
                            threshold=threshold, max_weight=max_weight,
                            weighting=he_weighting))  # fmt: skip

    @property
    def adaptive(self) -> bool:
        return self.config.adaptive

    def key_setup(self, *, clients: list[int], dim: int, tensors: int = 0) -> KeySetup:
        plan = plan_for(self.config, n_clients=len(clients), dim=dim, tensors=tensors)
        return KeySetup(self, plan, list(clients))

    def server(
        self, *, round: int, clients: list[int], dim: int, ranges: TensorRanges | None = None
    ) -> ServerSession:
        # The server only adds ciphertexts: the ranges shape what the sites encrypt.
        if self.config.keys == "threshold":
            return ThresholdServer(round=round, clients=clients, dim=dim, plan=self._plan(),
                                   roster=self.roster)  # fmt: skip
        return HEServer(round=round, clients=clients, dim=dim, plan=self._plan())

    def client(
        self, *, client_id: int, identity: Identity | None = None, **kwargs
    ) -> ClientSession:
        if client_id not in self.keyrings:
            raise ConfigError(f"he: site {client_id} holds no key in this process")
        keyring = self.keyrings[client_id]
        if self.config.keys == "threshold":
            return ThresholdClient(client_id=client_id, keyring=keyring, roster=self.roster,
                                   identity=identity, **kwargs)  # fmt: skip
        return HEClient(client_id=client_id, keyring=keyring, **kwargs)

    def describe(self) -> dict:
        c = self.config
        clip = "adaptive" if c.adaptive else c.clip
        options = {"scheme": c.scheme, "keys": c.keys, "threshold": c.threshold,
                   "weighting": c.weighting, "clip": clip,
                   "quant_bits": c.quant_bits, "max_weight": c.max_weight,
                   **({"dp_noise": c.noise.describe()} if c.noise else {})}  # fmt: skip
        return {**options, "plan": self.plan} if self.plan else options

    def for_counts(self, max_count: int) -> ProtocolSpec | None:
        if self.config.scheme != "bfv":
            return None  # CKKS sums floats, not exactly: counts are summed in the clear
        from fedshield.protocols.he.count_sum import HECountSpec  # imports this module

        return HECountSpec(self, max_count)

    def _plan(self) -> HEPlan:
        if self.plan is None:
            raise ConfigError("he: run the key setup (spec.key_setup(...)) before the first round")
        return self.plan


DEFAULT_QUANT_BITS = {name: spec.default_quant_bits for name, spec in PROTOCOLS.items()}


def get_protocol(
    name: str,
    *,
    max_weight: float | None = None,
    clip: float | None = None,
    quant_bits: int | None = None,
    threshold: int | None = None,
    neighbours: int | None = None,
    colluders: int | None = None,
    he_scheme: str = "bfv",
    he_weighting: str = "fraction",
    he_keys: str = "shared",
    secagg_weighting: str = "fraction",
    sites: int | None = None,
) -> ProtocolSpec:
    """The protocol called ``name`` with its options.

    Args:
        name: ``plain``, ``secagg`` or ``he`` (or any registered name).
        max_weight: the largest FedAvg weight of any site (its sample count). Required by
            ``secagg`` and ``he``, which turn weights into small public integers against it.
        clip: a fixed shared range ``[-clip, clip]`` for quantized ``secagg`` / ``he`` BFV
            updates; ``None`` (default): per-tensor ranges that adapt each round
            (:mod:`fedshield.protocols.ranges`).
        quant_bits: ``None`` takes the protocol's default (:data:`DEFAULT_QUANT_BITS`):
            float32 for ``plain`` (per-chunk quantization when given), 8 otherwise.
        threshold, neighbours: ``secagg``'s Shamir threshold and neighbour count; ``he``
            with threshold keys: how many sites' shares decrypt (``None``: every site).
        colluders: ``secagg``: the most sites a malicious server may collude with (sizes
            the consistency quorum; ``None``: threshold - 1).
        he_scheme, he_weighting, he_keys: ``he``'s scheme (``bfv``, ``ckks``), weighting,
            and keys (``shared``; ``threshold``: no site decrypts alone).
        secagg_weighting: ``secagg``'s weighting, ``fraction`` (no weight bits in the ring)
            or ``integer`` (:class:`~fedshield.protocols.secagg.SecAggConfig`).
        sites: the federation's size; ``secagg`` then pins its smallest round (and fewest
            survivors) to the Shamir threshold at that size, so a server cannot shrink a
            round around one client (``SecAggConfig.min_clients``).

    Raises:
        ConfigError: an unknown name or an invalid option.
        TypeError: ``max_weight`` missing where the protocol needs it.
    """
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protection {name!r}; available: {list(PROTOCOLS)}")
    if max_weight is None and name != "plain":
        raise TypeError(
            f"get_protocol({name!r}) needs max_weight=: the largest site weight (its sample "
            "count); without it FedAvg would silently become an unweighted mean"
        )
    return PROTOCOLS[name].from_options(
        max_weight=max_weight, clip=clip, quant_bits=quant_bits, threshold=threshold,
        neighbours=neighbours, colluders=colluders, he_scheme=he_scheme,
        he_weighting=he_weighting, he_keys=he_keys,
        secagg_weighting=secagg_weighting, sites=sites,
    )  # fmt: skip
