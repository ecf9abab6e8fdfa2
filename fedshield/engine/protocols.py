"""The protocols the engine can run, by name, bound to their options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from fedshield.crypto.secagg import SecAggClient, SecAggServer
from fedshield.crypto.secagg_config import SecAggConfig
from fedshield.errors import ConfigError
from fedshield.protocols.base import ClientSession, ServerSession
from fedshield.protocols.plain import PlainClient, PlainServer

__all__ = ["PROTOCOLS", "ProtocolPair", "get_protocol"]

PROTOCOLS = ("plain", "secagg")


@dataclass(frozen=True)
class ProtocolPair:
    """A protocol's name and its two session factories, options already bound.

    ``server(round=, clients=, dim=)`` and ``client(client_id=, round=, update=, weight=)``.
    """

    name: str
    server: Callable[..., ServerSession]
    client: Callable[..., ClientSession]
    options: dict
    stages: tuple[str, ...]


def get_protocol(
    name: str,
    *,
    max_weight: float = 1.0,
    clip: float = 0.1,
    quant_bits: int = 8,
    threshold: int | None = None,
    neighbours: int | None = None,
) -> ProtocolPair:
    """The protocol called ``name``; ``secagg`` takes the quantization and threshold options."""
    if name == "plain":
        return ProtocolPair("plain", PlainServer, PlainClient, {}, PlainServer.stages)
    if name == "secagg":
        try:
            config = SecAggConfig(
                clip=clip,
                quant_bits=quant_bits,
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
                "quant_bits": quant_bits,
                "threshold": threshold,
                "neighbours": neighbours,
                "max_weight": max_weight,
            },
            SecAggServer.stages,
        )
    raise ConfigError(f"unknown protection {name!r}; available: {list(PROTOCOLS)}")
