"""The protocols the engine can run, by name, bound to their options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

from fedshield.crypto.he import HEClient, HEServer
from fedshield.crypto.he_keys import HEKeySetupClient, HEKeySetupServer
from fedshield.crypto.he_params import HEConfig, plan_for
from fedshield.crypto.secagg import SecAggClient, SecAggServer
from fedshield.crypto.secagg_config import SecAggConfig
from fedshield.errors import ConfigError
from fedshield.protocols.base import ClientSession, ServerSession
from fedshield.protocols.plain import PlainClient, PlainFormat, PlainServer

__all__ = ["DEFAULT_QUANT_BITS", "PROTOCOLS", "ProtocolPair", "get_protocol"]

PROTOCOLS = ("plain", "secagg", "he")
DEFAULT_QUANT_BITS = {"plain": None, "secagg": 8, "he": 8}  # None: float32 on the wire
KEY_HOLDER = 0  # the site that makes the HE secret key


@dataclass(frozen=True)
class ProtocolPair:
    """A protocol's name and its two session factories, options already bound.

    ``server(round=, clients=, dim=)`` and
    ``client(client_id=, round=, update=, weight=, quant_seed=)`` (plus ``indices=`` for a
    sparse ``plain`` format: see :meth:`with_topk`).
    """

    name: str
    server: Callable[..., ServerSession]
    client: Callable[..., ClientSession]
    options: dict
    stages: tuple[str, ...]
    plain_format: PlainFormat | None = None
    he_config: HEConfig | None = None

    def prepare(self, *, clients: list[int], dim: int) -> ProtocolPair:
        """Once per federation, before the first round: ``he`` makes its parameters for these
        clients and ``dim`` values and distributes the secret key among the sites (the server
        only relays sealed keys). Other protocols need nothing."""
        if self.he_config is None:
            return self
        from fedshield.engine.runner import run_protocol
        from fedshield.engine.transport import InProcessTransport

        plan = he_plan(self, clients=clients, dim=dim)
        sites = {c: HEKeySetupClient(client_id=c, plan=plan, holder=KEY_HOLDER) for c in clients}
        server = HEKeySetupServer(round=0, clients=clients, dim=1, plan=plan, holder=KEY_HOLDER)
        outcome = run_protocol(server, InProcessTransport(sites))
        if outcome.revealed is None or len(outcome.revealed.contributors) != len(clients):
            raise ConfigError(f"he: key distribution failed ({outcome.aborted})")
        return with_he_keys(self, plan, {c: site.keyring for c, site in sites.items()})

    def with_topk(self, k: int) -> ProtocolPair:
        """The same protocol carrying ``k`` (index, value) pairs per client (``plain`` only).

        Top-k cannot run under secure aggregation or HE: each client keeps different indices,
        so masked or encrypted vectors would not line up, the sum would need every index, and
        the indices themselves reveal which parameters moved most.
        """
        if self.plain_format is None:
            raise ConfigError(
                f"--sparsify topk cannot run under --protect {self.name}: every client keeps "
                "different indices, so the protected vectors would not line up (the sum needs "
                "every index) and the indices themselves would leak which parameters moved "
                "most. Use --sparsify randk:F (the round's shared seed picks the same indices "
                "at every client) or --protect plain."
            )
        fmt = replace(self.plain_format, k=k)
        return replace(
            self,
            server=partial(PlainServer, format=fmt),
            client=partial(PlainClient, format=fmt),
            plain_format=fmt,
        )


def he_plan(pair: ProtocolPair, *, clients: list[int], dim: int):
    """The HE parameters both sides derive for these clients and ``dim`` values."""
    return plan_for(pair.he_config, n_clients=len(clients), dim=dim)


def with_he_keys(pair: ProtocolPair, plan, keyrings: dict) -> ProtocolPair:
    """``pair`` bound to a plan and the keyrings of the sites in this process."""
    return replace(
        pair,
        server=partial(HEServer, plan=plan),
        client=_HEClientFactory(keyrings),
        options={**pair.options, "plan": plan},
    )


class _HEClientFactory:
    """Makes each site's ``HEClient`` with that site's own keyring."""

    def __init__(self, keyrings: dict) -> None:
        self.keyrings = keyrings

    def __call__(self, *, client_id: int, **kwargs) -> HEClient:
        return HEClient(client_id=client_id, keyring=self.keyrings[client_id], **kwargs)


def get_protocol(
    name: str,
    *,
    max_weight: float = 1.0,
    clip: float = 0.1,
    quant_bits: int | None = None,
    threshold: int | None = None,
    neighbours: int | None = None,
    he_scheme: str = "bfv",
    he_weighting: str = "fraction",
) -> ProtocolPair:
    """The protocol called ``name`` with its options.

    ``quant_bits``: ``None`` takes the protocol's default (:data:`DEFAULT_QUANT_BITS`): float32
    for ``plain`` (per-chunk quantization when given), 8 for ``secagg`` (shared range
    ``[-clip, clip]``).
    """
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protection {name!r}; available: {list(PROTOCOLS)}")
    bits = DEFAULT_QUANT_BITS[name] if quant_bits is None else quant_bits
    if name == "he":
        config = HEConfig(
            scheme=he_scheme,
            clip=clip,
            quant_bits=bits,
            max_weight=max_weight,
            weighting=he_weighting,
        )
        return ProtocolPair(
            "he",
            _unprepared,
            _unprepared,
            {
                "scheme": he_scheme,
                "weighting": he_weighting,
                "clip": clip,
                "quant_bits": bits,
                "max_weight": max_weight,
            },
            HEServer.stages,
            he_config=config,
        )
    if name == "plain":
        try:
            fmt = PlainFormat(quant_bits=bits)
        except ValueError as exc:
            raise ConfigError(f"plain: {exc}") from None
        return ProtocolPair(
            "plain",
            partial(PlainServer, format=fmt),
            partial(PlainClient, format=fmt),
            {"quant_bits": bits},
            PlainServer.stages,
            plain_format=fmt,
        )
    try:
        config = SecAggConfig(
            clip=clip,
            quant_bits=bits,
            max_weight=max_weight,
            threshold=threshold,
            neighbours=neighbours,
        )
    except ValueError as exc:
        raise ConfigError(f"secagg: {exc}") from None
    return ProtocolPair(
        "secagg",
        partial(SecAggServer, config=config),
        partial(SecAggClient, config=config),
        {
            "clip": clip,
            "quant_bits": bits,
            "threshold": threshold,
            "neighbours": neighbours,
            "max_weight": max_weight,
        },
        SecAggServer.stages,
    )


def _unprepared(**_kwargs):
    raise ConfigError("he: call ProtocolPair.prepare(clients=, dim=) before the first round")
