"""One configured run: options in, a federation out, records as plain data."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from fedshield.aggregation import build as build_server_opt
from fedshield.data import SiteData, load_site_specs, load_sites
from fedshield.data.site_specs import SITE_DATA, check_site_data, spec_class_names, spec_classes
from fedshield.engine.compression import Compression, UpdateCompressor
from fedshield.engine.dp import check_options as check_dp_options
from fedshield.engine.dp import dp_config, dp_model, dp_trainer, with_distributed_noise
from fedshield.engine.dropout import DropoutPolicy
from fedshield.engine.federation import Federation
from fedshield.engine.global_model import GlobalModel
from fedshield.engine.models import build_model
from fedshield.engine.paramspec import ParamSpec
from fedshield.engine.runner import enrol
from fedshield.engine.segmentation import SEGMENTATION_LR, check_task, segmentation_trainer
from fedshield.engine.server_round import ServerRound
from fedshield.engine.site import Site, SiteRuntime, make_site
from fedshield.engine.trainer import Algorithm, LocalTrainer
from fedshield.errors import ConfigError
from fedshield.privacy import DPConfig
from fedshield.protocols.registry import DEFAULT_QUANT_BITS, ProtocolSpec, get_protocol

__all__ = [
    "RunConfig",
    "build_federation",
    "build_global_model",
    "build_server_round",
    "build_site_runtime",
    "enrol_sites",
    "parse_dropout",
    "with_data_facts",
]


@dataclass
class RunConfig:
    """Every option of ``fedshield run``, with its default."""

    dataset: str = "synthetic"
    site_data: list[str] | None = None  # one data spec per site (docs/data.md), not --dataset
    class_names: list[str] | None = None  # the specs' classes in order (None: read from them)
    task: str = "classification"  # or segmentation: masks, MONAI UNet, Dice
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
    clip: float | None = None  # None: adaptive per-tensor ranges; a number fixes the range
    threshold: int | None = None
    neighbours: int | None = None
    colluders: int | None = None  # secagg: sizes the consistency quorum (None: threshold - 1)
    he_scheme: str = "bfv"
    he_weighting: str = "fraction"
    he_keys: str = "shared"  # he: "threshold": no site decrypts alone (n-of-n)
    secagg_weighting: str = "fraction"
    sparsify: str | None = None
    error_feedback: bool = False
    train_all_coordinates: bool = False  # rand-k: the classic way (sites train everything)
    dropout: float = 0.0
    dropout_schedule: dict[str, list[int]] = field(default_factory=dict)
    partition: str = "iid"
    alpha: float = 0.5
    shift: bool | None = None
    transport: str = "inprocess"
    lr: float | None = None  # local Adam's (None: 1e-3; 3e-3 for segmentation)
    batch_size: int = 32
    seed: int = 0
    max_weight: float | None = None  # public bound of a site's weight (None: largest site's n)
    in_channels: int | None = None  # image channels (None: read from the data)
    classes: int | None = None  # synthetic: how many (default 2); a file's: read from its labels
    threads: int | None = None  # torch threads of a training process (None: torch's default
    # in process, 1 per Flower site process); float results depend on it
    dp_mode: str | None = None  # site-level DP-FedAvg: central, local (None: no DP)
    dp_clip: float | None = None  # L2 bound of an update (--dp-mode) or gradient (--dp-sgd): 1
    dp_epsilon: float | None = None  # target epsilon after the planned rounds...
    dp_noise: float | None = None  # ...or the noise multiplier itself
    dp_delta: float | None = None  # the reported (epsilon, delta)'s delta: 1e-5
    dp_sgd: bool = False  # record-level DP-SGD inside each site's training (Opacus)
    dp_colluders: int | None = None  # distributed: sites whose noise may be known (None: 1)

    def __post_init__(self) -> None:
        if self.site_data is not None:  # the sites' own folders: --dataset stands aside
            check_site_data(self.site_data, sites=self.sites, dataset=self.dataset)
            self.site_data, self.dataset = [str(p) for p in self.site_data], SITE_DATA
        if self.model is None:
            # The multi-scanner synthetic sites get the GroupNorm CNN: BatchNorm statistics
            # averaged across scanners miscalibrate the shared model, and under a quantizing
            # protocol their large per-round moves get clipped (measured: a collapse to AUC 0.49
            # in round 5 of the default demo). FedBN needs BatchNorm; MedMNIST keeps it.
            synthetic = self.dataset == "synthetic" and self.algorithm != "fedbn"
            self.model = "cnn-gn" if synthetic else "cnn"
            if self.task == "segmentation":
                self.model = "unet"
        if self.lr is None:
            self.lr = SEGMENTATION_LR if self.task == "segmentation" else 1e-3
        check_task(self)
        if self.quant_bits is None:
            self.quant_bits = DEFAULT_QUANT_BITS.get(self.protect)
        if self.compression().sparsify == "topk" and self.protect != "plain":
            get_protocol(self.protect, max_weight=1.0).with_topk(1)  # refuses, with the reason
        if self.classes is not None and self.classes < 2:
            raise ConfigError(f"--classes must be at least 2, got {self.classes}")
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
        n_of_n = self.threshold is None or self.threshold >= self.sites
        if self.he_keys == "threshold" and n_of_n and (self.dropout or self.dropout_schedule):
            raise ConfigError(
                "--he-keys threshold without --threshold is n-of-n: every site must answer "
                "every round, so a dropout would abort it; set --threshold below --sites (that "
                "many sites decrypt), drop --dropout, or use --he-keys shared"
            )
        check_dp_options(self)

    def dp_config(self) -> DPConfig | None:
        """Site-level DP-FedAvg's parameters (``None`` without ``--dp-mode``; record-level
        DP-SGD lives in the trainer)."""
        return dp_config(self)

    def compression(self) -> Compression:
        """The compression chain these options describe (FedSGD's rand-k: the classic way)."""
        feedback, train_all = self.error_feedback, self.train_all_coordinates
        chain = Compression.parse(self.sparsify, error_feedback=feedback, train_all=train_all)
        return chain.for_algorithm(self.algorithm)

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


def with_data_facts(config: RunConfig) -> RunConfig:
    """``config`` with ``max_weight`` and ``in_channels`` read from the data where unset:
    what every process of a deployment must agree on without seeing the others' data (the
    launcher of a loopback deployment reads them; a real one writes them in the config)."""
    if config.site_data is not None and config.class_names is None:  # every host checks them
        config = replace(config, class_names=spec_class_names(config.site_data))
    if None not in (config.max_weight, config.in_channels) and (
        config.classes is not None or config.dataset == "synthetic"
    ):
        return replace(config, classes=_classes(config))
    data = _load(config)
    return replace(
        config,
        max_weight=config.max_weight or max(float(d.n_train) for d in data),
        in_channels=config.in_channels or int(data[0].train_x.shape[1]),
        classes=_classes(config, data),
    )


def build_federation(config: RunConfig) -> Federation:
    """Load the data, build the sites and the in-process federation ``config`` describes."""
    data = _load(config)
    sites = [_site(config, i, d) for i, d in enumerate(data)]
    in_channels = config.in_channels or data[0].train_x.shape[1]
    return Federation(
        model_factory=lambda: _model(config, in_channels, _classes(config, data)),
        sites=sites,
        algorithm=_algorithm(config),
        trainer=_trainer(config),
        protect=_protocol(config, config.max_weight or max(s.weight for s in sites)),
        server_opt=build_server_opt(config.server_opt, lr=config.server_lr),
        dropout=DropoutPolicy(
            probability=config.dropout, schedule=config.dropout_schedule, seed=config.seed
        ),
        local_epochs=config.local_epochs,
        compression=config.compression(),
        seed=config.seed,
        privacy=config.dp_config(),
    )


def build_site_runtime(config: RunConfig, site_id: int) -> SiteRuntime:
    """Site ``site_id``'s runtime, from its own data alone (a deployment's site process).

    ``config.max_weight`` (and for a data file ``config.classes``) must be set
    (:func:`with_data_facts`): the site cannot read it from
    the other sites' data. The protocol is not set up (``he``: its key comes through the grid).
    """
    _require_facts(config, "max_weight")
    (data,) = _load(config, only=site_id)
    torch.manual_seed(config.seed)  # the same initial model as the server's
    model = _model(config, data.train_x.shape[1], _classes(config, only=site_id))
    spec = ParamSpec.from_module(model, exclude_batchnorm=_algorithm(config).exclude_batchnorm)
    compressor = _compressor(config, spec)
    return SiteRuntime(
        site_id=site_id, site=_site(config, site_id, data), model=model, spec=spec,
        protocol=_protocol(config, config.max_weight, compressor), algorithm=_algorithm(config),
        trainer=_trainer(config), local_epochs=config.local_epochs, compressor=compressor,
        privacy=config.dp_config(),
    )  # fmt: skip


def enrol_sites(config: RunConfig, directory: Path) -> Path:
    """Enrol ``config``'s sites for a deployment: ``roster.json`` (public, for everyone) and
    ``site<i>.identity`` (site ``i``'s private key, mode 0600) in ``directory``; the roster's
    path.

    Raises:
        ConfigError: ``directory`` already holds a roster or an identity key (an enrolment
            never overwrites one, nor leaves a new roster beside another enrolment's keys).
    """
    _require_facts(config, "max_weight")
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        names = sorted(
            p.name
            for p in directory.iterdir()
            if p.name == "roster.json" or p.match("site*.identity")
        )
    except OSError as exc:
        raise ConfigError(f"cannot enrol into {directory}: {exc.strerror}") from None
    if names:
        raise ConfigError(
            f"{directory} already holds {', '.join(names)}: enrol into an empty directory (an "
            "enrolment never overwrites a roster or an identity key, nor mixes with another's)"
        )
    roster, identities = enrol(_protocol(config, config.max_weight), list(range(config.sites)))
    path = directory / "roster.json"
    try:
        for site, identity in identities.items():
            identity.save(directory / f"site{site}.identity")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:  # one created since the check above, or no permission
        raise ConfigError(f"cannot write {exc.filename}: {exc.strerror}; enrol again") from None
    with os.fdopen(fd, "w") as file:
        file.write(roster.to_json() + "\n")
    return path


def build_server_round(config: RunConfig) -> ServerRound:
    """The server's round for ``config``, with no site's data (a deployment's server).

    ``config.max_weight`` and ``config.in_channels`` must be set (:func:`with_data_facts`).
    The protocol is not set up (``he``: the key setup runs through the grid).
    """
    _require_facts(config, "max_weight", "in_channels")
    torch.manual_seed(config.seed)
    model = build_global_model(
        config, _model(config, config.in_channels, _classes(config)),
        adaptive_ranges=_protocol(config, config.max_weight).adaptive,
    )  # fmt: skip
    return ServerRound(
        protocol=_protocol(config, config.max_weight, model.compressor),
        model=model,
        n_sites=config.sites,
        holds_model=config.protect != "he",
        privacy=config.dp_config(),
    )


def build_global_model(
    config: RunConfig, model: torch.nn.Module, *, adaptive_ranges: bool = False
) -> GlobalModel:
    """The global model starting from ``model``'s weights, with ``config``'s server
    optimizer (a site holds one under ``he``); ``adaptive_ranges``: the protocol's
    :attr:`~fedshield.protocols.registry.ProtocolSpec.adaptive`."""
    spec = ParamSpec.from_module(model, exclude_batchnorm=_algorithm(config).exclude_batchnorm)
    return GlobalModel(
        spec=spec,
        vector=spec.flatten(model),
        server_opt=build_server_opt(config.server_opt, lr=config.server_lr),
        compressor=_compressor(config, spec),
        adaptive_ranges=adaptive_ranges,
    )


def _load(config: RunConfig, only: int | None = None) -> list[SiteData]:
    if config.site_data is not None:  # only: that site's spec and folder alone
        return load_site_specs(
            config.site_data, only=only, task=config.task, classes=config.classes,
            class_names=config.class_names,
        )  # fmt: skip
    return load_sites(
        config.dataset, config.sites, partition=config.partition, alpha=config.alpha,
        shift=config.shift, seed=config.seed, only=only,
        classes=config.classes, task=config.task,
    )  # fmt: skip


def _classes(config: RunConfig, data: list[SiteData] | None = None, only: int | None = None) -> int:
    """How many classes the model tells apart: ``--classes``, the data specs' class list
    (``only``: that site's spec), 2 for synthetic data and for segmentation (background,
    lesion), else the largest label in ``data`` plus one (a process without data needs it in
    its config)."""
    if config.classes is not None:
        return config.classes
    if config.site_data is not None:
        return spec_classes(config.site_data, only=only)
    if config.dataset == "synthetic" or config.task == "segmentation":
        return 2
    if data is None:  # a site process's own shard may lack a class: the config must say
        _require_facts(config, "classes")
    labels = [d.train_y for d in data] + [d.test_y for d in data if d.test_y is not None]
    return max(2, int(max(int(y.max(initial=0)) for y in labels)) + 1)


def _site(config: RunConfig, site_id: int, data: SiteData) -> Site:
    return make_site(data, batch_size=config.batch_size, seed=config.seed * 100 + site_id)


def _algorithm(config: RunConfig) -> Algorithm:
    return Algorithm(config.algorithm, mu=config.mu, sgd_lr=config.fedsgd_lr)


def _trainer(config: RunConfig) -> LocalTrainer:
    adam = partial(torch.optim.Adam, lr=config.lr)
    if config.task == "segmentation":
        return segmentation_trainer(adam)
    return dp_trainer(config, adam) if config.dp_sgd else LocalTrainer(optimizer_factory=adam)


def _model(config: RunConfig, in_channels: int, classes: int) -> torch.nn.Module:
    """``config.model``; under ``--dp-sgd`` with GroupNorm for BatchNorm (Opacus's fix)."""
    model = build_model(config.model, in_channels=in_channels, num_classes=classes)
    return dp_model(model) if config.dp_sgd else model


def _compressor(config: RunConfig, spec: ParamSpec) -> UpdateCompressor:
    return UpdateCompressor(
        config.compression(), dim=spec.dim, seed=config.seed, n_trainable=spec.n_trainable
    )


def _protocol(
    config: RunConfig, max_weight: float, compressor: UpdateCompressor | None = None
) -> ProtocolSpec:
    """``config``'s protection; with ``compressor``, bound to its top-k size (every builder
    must agree: the server and the sites parse the same payload format)."""
    clip = config.clip
    if config.dp_mode is not None:  # every site's weight is 1 under DP
        max_weight = 1.0
    if config.dp_mode == "distributed":  # its own grid: never adaptive ranges
        clip = config.dp_config().clip
    protocol = get_protocol(
        config.protect, max_weight=max_weight, clip=clip, quant_bits=config.quant_bits,
        threshold=config.threshold, neighbours=config.neighbours, colluders=config.colluders,
        he_scheme=config.he_scheme, he_keys=config.he_keys,
        he_weighting=config.he_weighting, secagg_weighting=config.secagg_weighting,
        sites=config.sites,
    )  # fmt: skip
    if compressor is not None and compressor.compression.sparsify == "topk":
        protocol = protocol.with_topk(compressor.k)
    if compressor is not None:
        protocol = with_distributed_noise(
            protocol, config.dp_config(), dim=compressor.protocol_dim, sites=config.sites
        )
    return protocol


def _require_facts(config: RunConfig, *names: str) -> None:
    missing = [n for n in names if getattr(config, n) is None]
    if missing:
        raise ConfigError(
            f"a deployment's processes need {', '.join(missing)} in the run config (the same "
            "for every process): fill them with with_data_facts(config) in the launcher"
        )
