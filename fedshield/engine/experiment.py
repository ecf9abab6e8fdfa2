"""One configured run: options in, a federation out, records as plain data."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch

from fedshield.aggregation import build as build_server_opt
from fedshield.data import load_sites
from fedshield.engine.dropout import DropoutPolicy
from fedshield.engine.encoding import Encoding
from fedshield.engine.federation import Federation, make_site
from fedshield.engine.models import build_model
from fedshield.engine.trainer import Algorithm, LocalTrainer
from fedshield.errors import ConfigError
from fedshield.protocols.registry import DEFAULT_QUANT_BITS, get_protocol

__all__ = ["RunConfig", "build_federation", "parse_dropout"]


@dataclass
class RunConfig:
    """Every option of ``fedshield run``, with its default."""

    dataset: str = "synthetic"
    sites: int = 4
    rounds: int = 5
    local_epochs: int = 2
    algorithm: str = "fedavg"
    mu: float = 0.01
    fedsgd_lr: float = 0.1
    server_opt: str = "none"
    server_lr: float | None = None
    model: str | None = None
    protect: str = "secagg"
    quant_bits: int | None = None  # None: the protocol's default (8 for secagg, fp32 plain)
    clip: float = 0.1
    threshold: int | None = None
    neighbours: int | None = None
    he_scheme: str = "bfv"
    he_weighting: str = "fraction"
    sparsify: str | None = None
    error_feedback: bool = False
    dropout: float = 0.0
    dropout_schedule: dict[str, list[int]] = field(default_factory=dict)
    partition: str = "iid"
    alpha: float = 0.5
    shift: bool | None = None
    transport: str = "inprocess"
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0
    threads: int | None = None  # torch threads of a training process (None: torch's default
    # in process, 1 per Flower site process); float results depend on it

    def __post_init__(self) -> None:
        if self.model is None:
            # The multi-scanner synthetic sites get the GroupNorm CNN: BatchNorm statistics
            # averaged across scanners miscalibrate the shared model, and under a quantizing
            # protocol their large per-round moves get clipped (measured: a collapse to AUC 0.49
            # in round 5 of the default demo). FedBN needs BatchNorm; MedMNIST keeps it.
            synthetic = self.dataset == "synthetic" and self.algorithm != "fedbn"
            self.model = "cnn-gn" if synthetic else "cnn"
        if self.quant_bits is None:
            self.quant_bits = DEFAULT_QUANT_BITS.get(self.protect)
        self.encoding()  # validates --sparsify early
        if self.sites < 1 or self.rounds < 1 or self.local_epochs < 1:
            raise ConfigError("--sites, --rounds and --local-epochs must be at least 1")
        if self.lr <= 0 or self.batch_size < 1:
            raise ConfigError("--lr must be positive and --batch-size at least 1")
        if self.transport not in ("inprocess", "flower"):
            raise ConfigError(f"--transport must be inprocess or flower, got {self.transport!r}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")

    def encoding(self) -> Encoding:
        """The encoder chain these options describe."""
        return Encoding.parse(self.sparsify, error_feedback=self.error_feedback)

    def as_dict(self) -> dict:
        """Every effective option as plain data."""
        return asdict(self)


def parse_dropout(text: str) -> tuple[float, dict[str, list[int]]]:
    """``--dropout``: a probability (``0.1``) or a JSON schedule (``'{"input": [1, 3]}'``)."""
    try:
        return float(text), {}
    except ValueError:
        pass
    try:
        schedule = json.loads(text)
        if not isinstance(schedule, dict):
            raise ValueError
        return 0.0, {str(k): [int(c) for c in v] for k, v in schedule.items()}
    except (ValueError, TypeError):
        raise ConfigError(
            f"--dropout {text!r}: give a probability like 0.1 or a schedule like "
            "'{\"input\": [1, 3]}' (stage name to client ids)"
        ) from None


def build_federation(config: RunConfig, *, prepare_protocol: bool = True) -> Federation:
    """Load the data, build the sites and the federation that ``config`` describes.

    ``prepare_protocol=False`` leaves the protocol's one-time setup (``he`` keys) to the
    caller: the Flower transport runs it through the grid.
    """
    data = load_sites(
        config.dataset,
        config.sites,
        partition=config.partition,
        alpha=config.alpha,
        shift=config.shift,
        seed=config.seed,
    )
    sites = [
        make_site(d, batch_size=config.batch_size, seed=config.seed * 100 + i)
        for i, d in enumerate(data)
    ]
    in_channels = data[0].train_x.shape[1]
    lr = config.lr
    trainer = LocalTrainer(optimizer_factory=lambda params: torch.optim.Adam(params, lr=lr))
    return Federation(
        model_factory=lambda: build_model(config.model, in_channels=in_channels),
        sites=sites,
        algorithm=Algorithm(config.algorithm, mu=config.mu, sgd_lr=config.fedsgd_lr),
        trainer=trainer,
        protect=get_protocol(
            config.protect,
            max_weight=max(site.weight for site in sites),
            clip=config.clip,
            quant_bits=config.quant_bits,
            threshold=config.threshold,
            neighbours=config.neighbours,
            he_scheme=config.he_scheme,
            he_weighting=config.he_weighting,
        ),
        server_opt=build_server_opt(config.server_opt, lr=config.server_lr),
        dropout=DropoutPolicy(
            probability=config.dropout, schedule=config.dropout_schedule, seed=config.seed
        ),
        local_epochs=config.local_epochs,
        encoding=config.encoding(),
        seed=config.seed,
        prepare_protocol=prepare_protocol,
    )
