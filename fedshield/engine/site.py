"""One site's side of federated training: its data, model, trainer, compressor and sessions.

A :class:`SiteRuntime` has the lifecycle of MONAI's ``ClientAlgo``: :meth:`train` (from the
round's model broadcast to an open protocol session), :meth:`conclude` (once the protocol is
over: error feedback), :meth:`predict` (evaluation), :meth:`finalize`. It imports nothing of
the server: the in-process :class:`~fedshield.engine.federation.Federation` holds one per site,
and a Flower site process holds exactly one, built from that site's data alone.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedshield import wire
from fedshield.crypto.identity import Identity
from fedshield.data.sites import SiteData
from fedshield.engine.compression import CompressedUpdate, UpdateCompressor
from fedshield.engine.evaluation import SiteEvaluation
from fedshield.engine.metrics import predict, scalar_metrics
from fedshield.engine.paramspec import ParamSpec
from fedshield.engine.subspace import Subspace
from fedshield.engine.trainer import SUBSPACE_NEEDS_OUR_LOOP, Algorithm, LocalTrainer
from fedshield.errors import ConfigError, NonFiniteValues, WrongRound, WrongShape
from fedshield.privacy import DPConfig, SiteLevelDP
from fedshield.protocols.base import ClientSession
from fedshield.protocols.ranges import MAX_EXPONENT, MIN_EXPONENT
from fedshield.protocols.registry import MODEL_BROADCAST, ProtocolSpec

__all__ = ["Site", "SiteRuntime", "make_site", "parse_broadcast"]


@dataclass(frozen=True)
class Site:
    """A site as the engine sees it: loaders and its FedAvg weight (sample count). ``train``
    is ``None`` for a site whose trainer reads its own data (a MONAI ``ClientAlgo``)."""

    name: str
    train: DataLoader | None
    test: DataLoader | None
    weight: float

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"Site name must be a non-empty str, got {self.name!r}")
        if self.train is not None and not isinstance(self.train, DataLoader):
            raise TypeError(
                f"site {self.name!r}: train must be a torch DataLoader, got "
                f"{type(self.train).__name__} (make_site(SiteData) builds one)"
            )
        if self.test is not None and not isinstance(self.test, DataLoader):
            raise TypeError(f"site {self.name!r}: test must be a DataLoader or None")
        if isinstance(self.weight, bool) or not isinstance(self.weight, numbers.Real):
            raise TypeError(f"site {self.name!r}: weight must be a number, got {self.weight!r}")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(
                f"site {self.name!r}: weight must be positive and finite (its number of "
                f"training samples), got {self.weight}"
            )


def make_site(data: SiteData, *, batch_size: int = 32, seed: int = 0) -> Site:
    """Wrap a :class:`SiteData` in seeded, shuffled DataLoaders."""
    if not isinstance(data, SiteData):
        raise TypeError(f"make_site needs a SiteData, got {type(data).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if data.n_train == 0:
        raise ValueError(f"site {data.name!r} has no training samples")
    train = TensorDataset(torch.from_numpy(data.train_x), torch.from_numpy(data.train_y))
    test = TensorDataset(torch.from_numpy(data.test_x), torch.from_numpy(data.test_y))
    generator = torch.Generator().manual_seed(seed)
    return Site(
        name=data.name,
        train=DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator),
        test=DataLoader(test, batch_size=256) if len(test) else None,
        weight=float(data.n_train),
    )


class SiteRuntime:
    """Site ``site_id``'s part of every round.

    Args:
        site_id: the site's id in the protocols (0 .. n - 1).
        site: its loaders and weight.
        model: a model of the federation's architecture. Runtimes of one process may share it:
            each loads the global vector and its own local state before every use.
        spec: which tensors travel.
        protocol: the protection (bound to its keys, for ``he``).
        algorithm, trainer, local_epochs: the local work.
        compressor: this site's compression chain and its residual.
        identity: this site's identity key, which signs its round keys (``secagg``) and its
            key-setup messages (``he``); its public half is on the federation's roster.
        privacy: site-level DP-FedAvg (:mod:`fedshield.privacy`): every update is clipped
            (and under ``local`` noised) before it is compressed, and sent with weight 1.
    """

    def __init__(
        self,
        *,
        site_id: int,
        site: Site,
        model: nn.Module,
        spec: ParamSpec,
        protocol: ProtocolSpec,
        algorithm: Algorithm,
        trainer: LocalTrainer,
        local_epochs: int,
        compressor: UpdateCompressor,
        identity: Identity | None = None,
        privacy: DPConfig | None = None,
    ) -> None:
        if not isinstance(site, Site):
            raise TypeError(f"site must be a Site (make_site), got {type(site).__name__}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
        if site.train is None and not trainer.brings_data:
            raise TypeError(f"site {site.name!r} has no train loader and its trainer reads none")
        if trainer.brings_data and algorithm.name not in ("fedavg", "fedbn"):
            raise ConfigError(
                f"site {site.name!r}: {algorithm.name} changes the local loop, which its "
                "ClientAlgo owns: use fedavg or fedbn"
            )
        subspace = compressor.compression.subspace and algorithm.name != "fedsgd"
        if subspace and not trainer.trains_subspaces:
            raise ConfigError(f"site {site.name!r}: {SUBSPACE_NEEDS_OUR_LOOP}")
        trainer.join(site.name)
        self.site_id = site_id
        self.site = site
        self.model = model
        self.spec = spec
        self.protocol = protocol
        self.identity = identity
        self.algorithm = algorithm
        self.trainer = trainer
        self.local_epochs = local_epochs
        self.compressor = compressor
        self.local_state = spec.local_state(model)  # what never travels (FedBN's BatchNorm)
        self._pending: CompressedUpdate | None = None
        self.releases = 0  # rounds this site has trained (and sent an update for)
        self.privacy = None if privacy is None else SiteLevelDP(privacy)  # its own CSPRNG

    def use_protocol(self, protocol: ProtocolSpec) -> None:
        """Switch to ``protocol`` (``he``: the same protocol, now bound to this site's key)."""
        self.protocol = protocol

    def train(self, broadcast: bytes, round: int) -> ClientSession:
        """Train from the round's model, compress the update and open the protocol session."""
        start, exponents = parse_broadcast(
            broadcast, round=round, dim=self.spec.dim, tensors=len(self.spec.sizes)
        )
        return self.train_from(start, round, exponents)

    def train_from(
        self, start: np.ndarray, round: int, range_exponents: Sequence[int] | None = None
    ) -> ClientSession:
        """:meth:`train` from a model vector (and range exponents) this site already holds
        (``he`` over Flower)."""
        ranges = self._round_ranges(round, range_exponents)
        self._check_privacy_budget(round)
        self.load(start)
        self.trainer.local_update(
            self.algorithm, self.model, self.site.train, self.local_epochs,
            subspace=self._subspace(round),
        )  # fmt: skip
        delta = self.spec.flatten(self.model) - start
        if not np.isfinite(delta).all():  # before it can touch the local state or residual
            raise NonFiniteValues(
                f"site {self.site_id}: local training in round {round} gave NaN or infinite "
                "weights (it diverged: a lower --lr may help); the site sits this round out"
            )
        self.local_state = self.spec.local_state(self.model)
        if self.privacy is not None:
            delta = self.privacy.at_site(delta)
        self._pending = update = self.compressor.compress(round, delta)
        topk = self.compressor.compression.sparsify == "topk"
        indices = {"indices": update.indices} if topk else {}
        return self.protocol.client(
            client_id=self.site_id,
            round=round,
            update=update.values,
            weight=1.0 if self.privacy is not None else self.site.weight,
            quant_seed=self.compressor.quant_seed(self.site_id, round),
            identity=self.identity,
            **indices,
            **ranges,
        )

    def _subspace(self, round: int) -> Subspace | None:
        """The coordinates this round trains (rand-k's subspace training; ``None``: all)."""
        kept = self.compressor.training_subspace(round)
        if kept is None or self.algorithm.name == "fedsgd":
            return None
        return Subspace.of_round(self.spec, *kept)

    def _check_privacy_budget(self, round: int) -> None:
        """Under DP, train no more rounds than the noise was calibrated for: the site counts
        its own releases (a server asking for more would spend more than the epsilon)."""
        planned = self.privacy.config.rounds if self.privacy is not None else None
        planned = getattr(self.trainer, "rounds", None) if planned is None else planned
        if planned is not None and self.releases >= planned:
            raise WrongRound(
                f"site {self.site_id}: round {round} would be its {self.releases + 1}th "
                f"release, but its DP noise is calibrated for {planned} rounds (the privacy "
                "budget is spent; start a new run with a new budget)"
            )
        self.releases += 1

    def _round_ranges(self, round: int, exponents: Sequence[int] | None) -> dict:
        """``{"ranges": ...}`` for a protocol with adaptive ranges, else ``{}``."""
        if not self.protocol.adaptive:
            return {}
        if exponents is None:
            raise WrongShape(
                f"round {round}: {self.protocol.name} quantizes on adaptive ranges, but the "
                "model broadcast carries none (a server with a fixed --clip, or an old one)"
            )
        return {"ranges": self.compressor.ranges(round, self.spec.sizes, exponents)}

    def conclude(self, session: ClientSession) -> None:
        """After the protocol: keep as the residual what the session's messages did not carry."""
        if self._pending is not None:
            self.compressor.keep_residual(self._pending, session.sent)
            self._pending = None

    def load(self, vector: np.ndarray) -> nn.Module:
        """The model holding ``vector`` and this site's local state."""
        self.spec.load_into(self.model, vector)
        self.model.load_state_dict(self.local_state, strict=False)
        return self.model

    def predict(
        self, vector: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, float] | dict | None:  # fmt: skip
        """Labels, predicted probabilities and mean loss on this site's test set (``None``
        without one), of the model this site would deploy: ``vector`` and its local state;
        the metrics (a dict) of a ``ClientAlgo`` trainer or the trainer's ``evaluate_fn``
        instead."""
        if self.trainer.brings_data:
            return self.trainer.evaluate(self.load(vector))
        if self.site.test is None:
            return None
        if self.trainer.evaluate_fn is not None:
            model = self.load(vector).eval()
            with torch.no_grad():
                metrics = self.trainer.evaluate_fn(model, self.site.test)
            return scalar_metrics(metrics, self.site.name)
        return predict(self.load(vector), self.site.test, self.trainer.loss_fn)

    def evaluate(self, vector: np.ndarray) -> SiteEvaluation | dict | None:
        """What this site's evaluation of ``vector`` sends: its summary and own metrics
        (:class:`~fedshield.engine.evaluation.SiteEvaluation`, no example's label or
        prediction), a ``ClientAlgo``'s or ``evaluate_fn``'s own metrics, or ``None``
        without a test set."""
        predictions = self.predict(vector)
        if predictions is None or isinstance(predictions, dict):
            return predictions
        return SiteEvaluation.of(*predictions)

    def finalize(self) -> None:
        """Drop what a finished federation no longer needs (and finalize the trainer)."""
        self._pending = None
        self.trainer.finalize()


def parse_broadcast(
    data: bytes, *, round: int, dim: int, tensors: int
) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """The model vector of a broadcast and its range exponents (``None`` when it carries
    none), checked for protocol, stage, round, sender and lengths."""
    received = wire.parse(data)
    received.expect(protocol=MODEL_BROADCAST, stage=0, round=round, sender=wire.SERVER_ID)
    if len(received.fields) not in (1, 2):
        raise WrongShape(f"a model broadcast has 1 or 2 fields, got {len(received.fields)}")
    vector = received.array(0, dtype="<f4", shape=(dim,))
    if len(received.fields) == 1:
        return vector, None
    exponents = received.array(1, dtype="<i4", shape=(tensors,))
    if not ((exponents >= MIN_EXPONENT) & (exponents <= MAX_EXPONENT)).all():
        raise WrongShape(f"range exponents outside [{MIN_EXPONENT}, {MAX_EXPONENT}]")
    return vector, tuple(exponents.tolist())
