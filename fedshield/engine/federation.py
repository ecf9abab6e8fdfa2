"""A federation in one process: sites train, a protocol protects, the server aggregates.

This is the simulation and benchmarking engine. Every message still crosses the in-process
transport as bytes, so sizes are honest and parsing always runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedshield import wire
from fedshield.aggregation import ServerOptimizer, weighted_mean
from fedshield.data.sites import SiteData
from fedshield.engine.dropout import DropoutPolicy
from fedshield.engine.encoding import Encoding, UpdateEncoder
from fedshield.engine.metrics import binary_metrics, predict
from fedshield.engine.paramspec import ParamSpec
from fedshield.engine.runner import ProtocolOutcome, StageStats, run_protocol, setup_protocol
from fedshield.engine.trainer import Algorithm, LocalTrainer
from fedshield.engine.transport import InProcessTransport, Transport
from fedshield.errors import ConfigError
from fedshield.protocols.base import ClientSession, ServerSession
from fedshield.protocols.registry import MODEL_BROADCAST, ProtocolSpec, get_protocol

__all__ = ["MODEL_BROADCAST", "Federation", "RoundRecord", "Site", "make_site", "pooled_metrics"]


@dataclass(frozen=True)
class Site:
    """A site as the engine sees it: loaders and its FedAvg weight (sample count)."""

    name: str
    train: DataLoader
    test: DataLoader | None
    weight: float


def make_site(data: SiteData, *, batch_size: int = 32, seed: int = 0) -> Site:
    """Wrap a :class:`SiteData` in seeded, shuffled DataLoaders."""
    train = TensorDataset(torch.from_numpy(data.train_x), torch.from_numpy(data.train_y))
    test = TensorDataset(torch.from_numpy(data.test_x), torch.from_numpy(data.test_y))
    generator = torch.Generator().manual_seed(seed)
    return Site(
        name=data.name,
        train=DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator),
        test=DataLoader(test, batch_size=256) if len(test) else None,
        weight=float(data.n_train),
    )


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
    stages: list[StageStats] = field(default_factory=list)
    aborted: str | None = None
    protocol: dict = field(default_factory=dict)
    model_sha256: str | None = None  # the global model after the round (None: not held here)

    def as_dict(self) -> dict:
        """The record in ``result.json``'s round format."""
        return {
            "round": self.round,
            **{
                k: self.metrics[k]
                for k in ("accuracy", "auc", "loss", "sensitivity", "specificity")
            },
            "clients": self.clients,
            "dropped": self.dropped,
            "bytes_up_per_client": self.bytes_up_per_client,
            "bytes_down_per_client": self.bytes_down_per_client,
            "client_encode_s": self.client_encode_s,
            "server_aggregate_s": self.server_aggregate_s,
            "train_s": self.train_s,
            "wall_s": self.wall_s,
            "aborted": self.aborted,
            "model_sha256": self.model_sha256,
            "ring_bits": self.protocol.get("ring_bits"),
            "protocol": self.protocol,
            "per_site": self.per_site,
            "stages": [s.as_dict() for s in self.stages],
        }


class Federation:
    """Runs federated rounds over in-process sites.

    Args:
        model_factory: returns a fresh ``nn.Module`` (called once per federation).
        sites: the participating sites.
        algorithm: ``Algorithm("fedavg" | "fedsgd" | "fedprox" | "fedbn", ...)``.
        trainer: the local training loop (or the user's ``train_fn``).
        protect: a protocol name (``plain``, ``secagg`` with default options) or a
            :class:`ProtocolSpec` from :func:`get_protocol` with its options bound.
        server_opt: server optimizer on the trainable part; ``None`` is plain FedAvg.
        dropout: simulated dropouts per stage.
        local_epochs: local epochs per round (FedSGD ignores it).
        encoding: the encoder chain before protection (sparsification, error feedback).
        seed: seeds model initialisation, rand-k and stochastic rounding.
    """

    def __init__(
        self,
        *,
        model_factory: Callable[[], nn.Module],
        sites: Sequence[Site],
        algorithm: Algorithm | None = None,
        trainer: LocalTrainer | None = None,
        protect: str | ProtocolSpec = "plain",
        server_opt: ServerOptimizer | None = None,
        dropout: DropoutPolicy | None = None,
        local_epochs: int = 1,
        encoding: Encoding | None = None,
        seed: int = 0,
        prepare_protocol: bool = True,
    ) -> None:
        if not sites:
            raise ValueError("a federation needs at least one site")
        self.sites = list(sites)
        self.algorithm = algorithm or Algorithm()
        self.trainer = trainer or LocalTrainer()
        if isinstance(protect, str):
            protect = get_protocol(protect, max_weight=max(s.weight for s in self.sites))
        self.protocol = protect
        unknown = set(dropout.schedule) - set(protect.stages) if dropout else set()
        if unknown:
            raise ConfigError(
                f"dropout schedule names stage(s) {sorted(unknown)}, but {protect.name} has "
                f"the stages {list(protect.stages)}"
            )
        self.server_opt = server_opt or ServerOptimizer()
        self.dropout = dropout
        self.local_epochs = local_epochs
        torch.manual_seed(seed)
        self.model = model_factory()
        self.spec = ParamSpec.from_module(
            self.model, exclude_batchnorm=self.algorithm.exclude_batchnorm
        )
        self.global_vector = self.spec.flatten(self.model)
        self.encoder = UpdateEncoder(
            encoding or Encoding(),
            dim=self.spec.dim,
            n_sites=len(self.sites),
            seed=seed,
            n_trainable=self.spec.n_trainable,
        )
        if self.encoder.encoding.sparsify == "topk":
            self.protocol = self.protocol.with_topk(self.encoder.k)
        if prepare_protocol:  # off where another transport runs the setup (he over Flower)
            self.protocol = setup_protocol(
                self.protocol, clients=list(range(len(self.sites))), dim=self.encoder.protocol_dim
            )
        initial_local = self.spec.local_state(self.model)
        self.local_states = [{k: v.clone() for k, v in initial_local.items()} for _ in self.sites]
        self.round = 1  # rounds count from 1, on the wire and in records
        self._encoded: dict = {}  # site -> its EncodedUpdate, until the protocol is done

    # --- one round ---------------------------------------------------------------------------
    def run_round(self, on_site_done: Callable[[int], None] | None = None) -> RoundRecord:
        """Train every site, protect and aggregate their updates, update the global model."""
        start = time.perf_counter()
        broadcast = self.model_broadcast()
        sessions = {}
        train_s = 0.0
        for cid in range(len(self.sites)):
            t0 = time.perf_counter()
            sessions[cid] = self.site_session(cid, broadcast)
            train_s += time.perf_counter() - t0
            if on_site_done:
                on_site_done(cid)
        outcome, server = self.aggregate_round(InProcessTransport(sessions), list(sessions))
        for cid, session in sessions.items():
            self.site_sent(cid, session.sent)
        aggregate_s = self.finish_round(outcome, sessions)
        metrics, per_site = self.evaluate()
        return self.record(
            outcome, server, metrics, per_site, broadcast, aggregate_s, train_s, start
        )

    def model_broadcast(self) -> bytes:
        """The engine's "here is the global model" message of the current round."""
        header = wire.Header(MODEL_BROADCAST, 0, self.round, wire.SERVER_ID)
        return wire.serialize(header, [self.global_vector])

    def site_session(self, cid: int, broadcast: bytes) -> ClientSession:
        """Site ``cid``'s side of a round: parse the model, train, encode, open a session."""
        r = self.round
        received = wire.parse(broadcast)
        received.expect(protocol=MODEL_BROADCAST, stage=0, round=r, sender=wire.SERVER_ID)
        start_vector = received.array(0, dtype="<f4", shape=(self.spec.dim,))
        self._load_site_model(cid, start_vector)
        site = self.sites[cid]
        self.trainer.local_update(self.algorithm, self.model, site.train, self.local_epochs)
        self.local_states[cid] = self.spec.local_state(self.model)
        delta = self.spec.flatten(self.model) - start_vector
        self._encoded[cid] = encoded = self.encoder.encode(cid, r, delta)
        topk = self.encoder.encoding.sparsify == "topk"
        return self.protocol.client(
            client_id=cid,
            round=r,
            update=encoded.values,
            weight=site.weight,
            quant_seed=self.encoder.quant_seed(cid, r),
            **({"indices": encoded.indices} if topk else {}),
        )

    def site_sent(self, cid: int, sent: np.ndarray | None) -> None:
        """After the protocol: site ``cid`` keeps what its message did not carry (feedback)."""
        self.encoder.record(cid, self._encoded.pop(cid), sent)

    def aggregate_round(
        self, transport: Transport, clients: list[int]
    ) -> tuple[ProtocolOutcome, ServerSession]:
        """The server's side of the protocol over ``transport``: ``(outcome, server)``."""
        server = self.protocol.server(
            round=self.round, clients=clients, dim=self.encoder.protocol_dim
        )
        return run_protocol(server, transport, dropout=self.dropout), server

    def apply_aggregate(self, weighted_sum: np.ndarray, total_weight: float) -> None:
        """Apply a round's aggregate (what the server learned, or under ``he`` what a site
        decrypted) to the global model with the server optimizer."""
        mean = weighted_mean(weighted_sum, total_weight)
        self._apply(self.encoder.expand(self.encoder.shared_indices(self.round), mean))

    def finish_round(
        self, outcome: ProtocolOutcome, sessions: Mapping[int, ClientSession] | None = None
    ) -> float:
        """Apply the round's aggregate to the global model; returns the seconds it took plus
        the protocol's server seconds."""
        t0 = time.perf_counter()
        aggregate = _aggregate(outcome.revealed, sessions or {})
        if aggregate is not None:
            self.apply_aggregate(*aggregate)
        return time.perf_counter() - t0 + sum(s.server_s for s in outcome.stages)

    def record(
        self,
        outcome: ProtocolOutcome,
        server: ServerSession,
        metrics: dict,
        per_site: dict[str, dict],
        broadcast: bytes,
        aggregate_s: float,
        train_s: float,
        start: float,
        *,
        model_held: bool = True,
    ) -> RoundRecord:
        """The round's record; the next round begins. ``model_held=False`` where this process
        does not hold the global model (the server of ``he`` over Flower)."""
        r = self.round
        clients = list(outcome.revealed.contributors) if outcome.revealed is not None else []
        self.round += 1
        return RoundRecord(
            round=r,
            metrics=metrics,
            per_site=per_site,
            clients=clients,
            dropped=[c for c in range(len(self.sites)) if c not in clients],
            bytes_up_per_client=_mean_per_client(outcome.stages, "bytes_up"),
            bytes_down_per_client=len(broadcast) + _mean_per_client(outcome.stages, "bytes_down"),
            client_encode_s=_mean_per_client(outcome.stages, "client_s"),
            server_aggregate_s=aggregate_s,
            train_s=train_s,
            wall_s=time.perf_counter() - start,
            stages=outcome.stages,
            aborted=outcome.aborted,
            protocol={
                "name": self.protocol.name,
                **server.describe(),
                **self.encoder.encoding.describe(),
                **(_he_costs(outcome.stages) if self.protocol.name == "he" else {}),
            },
            model_sha256=self.spec.sha256(self.global_vector) if model_held else None,
        )

    def _apply(self, mean_delta: np.ndarray) -> None:
        k = self.spec.n_trainable
        new = self.global_vector.copy()
        new[:k] = self.server_opt.step(self.global_vector[:k], mean_delta[:k])
        new[k:] = self.global_vector[k:] + mean_delta[k:]  # buffers (BN statistics): plain mean
        self.global_vector = self.spec.clamp_variances(new)

    def _load_site_model(self, cid: int, vector: np.ndarray) -> None:
        self.spec.load_into(self.model, vector)
        self.model.load_state_dict(self.local_states[cid], strict=False)

    # --- evaluation --------------------------------------------------------------------------
    def evaluate(self) -> tuple[dict, dict[str, dict]]:
        """Pooled and per-site test metrics of the model each site would deploy now.

        Each site's model is the global model plus, under FedBN, its own BatchNorm layers.
        """
        results = [
            (self.sites[cid].name, *self.site_predictions(cid, self.global_vector))
            for cid in range(len(self.sites))
            if self.sites[cid].test is not None
        ]
        return pooled_metrics(results)

    def site_predictions(
        self, cid: int, vector: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Labels, predicted probabilities and mean loss of site ``cid``'s test set."""
        self._load_site_model(cid, vector)
        return predict(self.model, self.sites[cid].test, self.trainer.loss_fn)


def pooled_metrics(
    results: list[tuple[str, np.ndarray, np.ndarray, float]],
) -> tuple[dict, dict[str, dict]]:
    """Pooled and per-site metrics from each site's ``(name, labels, probabilities, loss)``."""
    if not results:
        return binary_metrics(np.zeros(0), np.zeros(0)), {}
    per_site = {name: binary_metrics(y, p, loss) for name, y, p, loss in results}
    labels = np.concatenate([y for _, y, _, _ in results])
    probs = np.concatenate([p for _, _, p, _ in results])
    loss = sum(loss * len(y) for _, y, _, loss in results) / max(1, len(labels))
    return binary_metrics(labels, probs, loss), per_site


def _aggregate(revealed, sessions) -> tuple[np.ndarray, float] | None:
    """``(weighted_sum, total_weight)``: what the server learned, or, under ``he``, what the
    sites decrypted (every site holds the same aggregate; they must agree)."""
    if revealed is None:
        return None
    if revealed.weighted_sum is not None:
        return revealed.weighted_sum, revealed.total_weight
    held = [s.aggregate for s in sessions.values() if s.aggregate is not None]
    if not held:
        return None
    weighted_sum, total = held[0]
    if any(t != total or not np.array_equal(w, weighted_sum) for w, t in held[1:]):
        raise RuntimeError("sites decrypted different aggregates")  # cannot happen: same key
    return weighted_sum, total


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
