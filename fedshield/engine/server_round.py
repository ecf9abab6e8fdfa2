"""The server's side of each round: broadcast the model, drive the protocol over a transport,
apply what it revealed, record the round.

It holds no site's data and no site's model: the in-process
:class:`~fedshield.engine.federation.Federation` and the Flower ``ServerApp`` drive it alike.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fedshield.engine.dropout import DropoutPolicy
from fedshield.engine.global_model import GlobalModel
from fedshield.engine.runner import ProtocolOutcome, StageStats, run_protocol
from fedshield.engine.transport import Transport
from fedshield.errors import ConfigError
from fedshield.privacy import DPConfig, SiteLevelDP
from fedshield.protocols.base import ClientSession, ServerSession
from fedshield.protocols.registry import ProtocolSpec

__all__ = ["RoundRecord", "RoundTiming", "ServerRound", "revealed_aggregate"]


STANDARD_METRICS = ("accuracy", "auc", "loss", "sensitivity", "specificity")


@dataclass
class RoundRecord:
    """What happened in one round: metrics, who took part, bytes and seconds."""

    round: int
    metrics: dict
    per_site: dict[str, dict]
    clients: list[int]
    dropped: list[int]
    bytes_up_per_client: float
    bytes_down_per_client: float
    client_encode_s: float
    server_aggregate_s: float
    train_s: float
    wall_s: float
    critical_path_s: float = 0.0  # the round's time with the sites in parallel (see RoundTiming)
    site_train_s: dict[int, float] = field(default_factory=dict)
    stages: list[StageStats] = field(default_factory=list)
    aborted: str | None = None
    protocol: dict = field(default_factory=dict)
    model_sha256: str | None = None  # the global model after the round (None: not held here)
    privacy: dict | None = None  # dp_mode, clip, noise_multiplier, delta, epsilon spent

    def as_dict(self) -> dict:
        """The record in ``result.json``'s round format."""
        return {
            "round": self.round,
            **{k: self.metrics[k] for k in STANDARD_METRICS},
            # and whatever else was pooled: balanced accuracy, per-class sensitivity, dice, a
            # user's own metric, how it was pooled ("site mean") or why it failed
            **{k: v for k, v in self.metrics.items() if k not in STANDARD_METRICS and k != "n"},
            "clients": self.clients,
            "dropped": self.dropped,
            "bytes_up_per_client": self.bytes_up_per_client,
            "bytes_down_per_client": self.bytes_down_per_client,
            "client_encode_s": self.client_encode_s,
            "server_aggregate_s": self.server_aggregate_s,
            "train_s": self.train_s,
            "wall_s": self.wall_s,
            "critical_path_s": self.critical_path_s,
            "site_train_s": {str(k): v for k, v in self.site_train_s.items()},
            "aborted": self.aborted,
            "model_sha256": self.model_sha256,
            "ring_bits": self.protocol.get("ring_bits"),
            "protocol": self.protocol,
            "per_site": self.per_site,
            "stages": [s.as_dict() for s in self.stages],
            **(self.privacy or {}),
        }


@dataclass(frozen=True)
class RoundTiming:
    """Seconds of a round's parts, and when it started (``time.perf_counter()``).

    ``site_train_s``: each site's training (and compression) seconds; ``aggregate_s``: the
    server's seconds in every stage plus applying the aggregate.
    """

    start: float
    site_train_s: Mapping[int, float]
    aggregate_s: float

    def critical_path_s(self, stages: list[StageStats]) -> float:
        """The round's time if the sites run in parallel, as in a deployment: the slowest
        site's training, then per stage the slowest site's client time, plus the server's
        time (its stage work and applying the aggregate). Transfers are not counted."""
        slowest_train = max(self.site_train_s.values(), default=0.0)
        slowest_clients = sum(max(s.client_s.values(), default=0.0) for s in stages)
        return slowest_train + slowest_clients + self.aggregate_s


class ServerRound:
    """Runs the server's part of every round for ``n_sites`` sites.

    Args:
        protocol: the protection (``he``: after its key setup; the server holds no key).
        model: the global model and its update rule.
        n_sites: how many sites take part (ids ``0 .. n_sites - 1``).
        dropout: simulated dropouts per stage (in-process runs).
        holds_model: ``False`` where the server never learns the aggregate (``he``): the
            sites apply it, and records carry no model digest.
        privacy: site-level DP-FedAvg: under ``central`` the server adds the noise to the sum;
            the mean divides by ``n_sites``; records carry the epsilon spent.
    """

    def __init__(
        self,
        *,
        protocol: ProtocolSpec,
        model: GlobalModel,
        n_sites: int,
        dropout: DropoutPolicy | None = None,
        holds_model: bool = True,
        privacy: DPConfig | None = None,
    ) -> None:
        if not isinstance(protocol, ProtocolSpec):
            raise TypeError(
                f"protocol must be a ProtocolSpec (get_protocol(name, ...)), got "
                f"{type(protocol).__name__}"
            )
        unknown = set(dropout.schedule) - set(protocol.stages) if dropout else set()
        if unknown:
            raise ConfigError(
                f"dropout schedule names stage(s) {sorted(unknown)}, but {protocol.name} has "
                f"the stages {list(protocol.stages)}"
            )
        self.protocol = protocol
        self.model = model
        self.n_sites = n_sites
        self.dropout = dropout
        self.holds_model = holds_model
        self.privacy = None if privacy is None else SiteLevelDP(privacy)  # its own CSPRNG
        self.round = 1  # rounds count from 1, on the wire and in records
        self.last_aggregate_round = 0  # the last round whose aggregate was revealed

    def broadcast(self) -> bytes:
        """The current round's model broadcast."""
        return self.model.broadcast(self.round)

    def use_protocol(self, protocol: ProtocolSpec) -> None:
        """Switch to ``protocol`` (``he``: the same protocol, bound to the key setup's plan)."""
        self.protocol = protocol

    def drive(
        self, transport: Transport, clients: list[int]
    ) -> tuple[ProtocolOutcome, ServerSession]:
        """The protocol's stages over ``transport`` with ``clients``: ``(outcome, session)``."""
        ranges = {"ranges": self.model.round_ranges(self.round)} if self.protocol.adaptive else {}
        server = self.protocol.server(
            round=self.round, clients=clients, dim=self.model.compressor.protocol_dim, **ranges
        )
        return run_protocol(server, transport, dropout=self.dropout), server

    def apply(
        self, outcome: ProtocolOutcome, sessions: Mapping[int, ClientSession] | None = None
    ) -> float:
        """Apply the round's aggregate to the global model; returns the seconds it took plus
        the protocol's server seconds. ``sessions``: in-process sites, whose decrypted
        aggregate counts under ``he``."""
        t0 = time.perf_counter()
        if outcome.revealed is not None:
            self.last_aggregate_round = self.round
        aggregate = revealed_aggregate(outcome, sessions or {})
        if aggregate is not None:
            weighted_sum, total, counts = aggregate
            if self.privacy is not None:
                weighted_sum, total = self.privacy.at_server(weighted_sum)
            self.model.apply_aggregate(weighted_sum, total, self.round, range_counts=counts)
        return time.perf_counter() - t0 + sum(s.server_s for s in outcome.stages)

    def record(
        self,
        outcome: ProtocolOutcome,
        server: ServerSession,
        *,
        evaluation: tuple[dict, dict[str, dict]],
        broadcast_bytes: int,
        timing: RoundTiming,
        model_sha256: str | None = None,
    ) -> RoundRecord:
        """The round's record; the next round begins. ``model_sha256``: the digest the sites
        report where the server does not hold the model (``he`` over Flower)."""
        metrics, per_site = evaluation
        revealed = outcome.revealed
        clients = list(revealed.contributors) if revealed is not None else []
        record = RoundRecord(
            round=self.round,
            metrics=metrics,
            per_site=per_site,
            clients=clients,
            dropped=[c for c in range(self.n_sites) if c not in clients],
            bytes_up_per_client=_mean_per_client(outcome.stages, "bytes_up"),
            bytes_down_per_client=broadcast_bytes + _mean_per_client(outcome.stages, "bytes_down"),
            client_encode_s=_mean_per_client(outcome.stages, "client_s"),
            server_aggregate_s=timing.aggregate_s,
            train_s=sum(timing.site_train_s.values()),
            wall_s=time.perf_counter() - timing.start,
            critical_path_s=timing.critical_path_s(outcome.stages),
            site_train_s=dict(timing.site_train_s),
            stages=outcome.stages,
            aborted=outcome.aborted,
            protocol={
                "name": self.protocol.name,
                **server.describe(),
                **self.model.compressor.compression.describe(),
                **(_he_costs(outcome.stages) if self.protocol.name == "he" else {}),
            },
            model_sha256=self.model.sha256() if self.holds_model else model_sha256,
            privacy=self._privacy_spent(),
        )
        self.round += 1
        return record

    def _privacy_spent(self) -> dict | None:
        """The round record's privacy fields; under distributed DP with its public encoding
        (``dp_encoding``: scale, bound, per-site noise, level bits)."""
        if self.privacy is None:
            return None
        spent = self.privacy.config.describe(self.round)
        encoding = self.protocol.describe().get("dp_noise")
        return {**spent, "dp_encoding": encoding} if encoding else spent


def revealed_aggregate(
    outcome: ProtocolOutcome, sessions: Mapping[int, ClientSession]
) -> tuple[np.ndarray, float, np.ndarray | None] | None:
    """``(weighted_sum, total_weight, range_counts)``: what the server learned, or, under
    ``he``, what the sites decrypted (every site holds the same aggregate; they must agree)."""
    revealed = outcome.revealed
    if revealed is None:
        return None
    if revealed.weighted_sum is not None:
        return revealed.weighted_sum, revealed.total_weight, revealed.range_counts
    held = [s for s in sessions.values() if s.aggregate is not None]
    if not held:
        return None
    (weighted_sum, total), counts = held[0].aggregate, held[0].range_counts
    for s in held[1:]:
        w, t = s.aggregate
        if t != total or not np.array_equal(w, weighted_sum) or not _same(s.range_counts, counts):
            raise RuntimeError("sites decrypted different aggregates")  # cannot: same key
    return weighted_sum, total, counts


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is b or (a is not None and b is not None and np.array_equal(a, b))


def _he_costs(stages: list[StageStats]) -> dict:
    """Ciphertext bytes and the encrypt / sum / decrypt seconds of an ``he`` round."""
    by_name = {s.stage: s for s in stages}
    upload, download = by_name.get("input"), by_name.get("aggregate")

    def mean(values: dict) -> float | None:
        return float(np.mean(list(values.values()))) if values else None

    return {
        "ciphertext_bytes_up": mean(upload.bytes_up) if upload else None,
        "ciphertext_bytes_down": mean(download.bytes_down) if download else None,
        "encrypt_s": mean(upload.client_s) if upload else None,
        "sum_s": upload.server_s if upload else None,
        "decrypt_s": mean(download.client_s) if download else None,
    }


def _mean_per_client(stages: list[StageStats], attr: str) -> float:
    """Mean over clients of the per-client total of ``attr`` across stages."""
    totals: dict[int, float] = {}
    for stats in stages:
        for cid, value in getattr(stats, attr).items():
            totals[cid] = totals.get(cid, 0.0) + value
    return float(np.mean(list(totals.values()))) if totals else 0.0
