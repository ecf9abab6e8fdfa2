"""A federation in one process: the site runtimes and the server round, composed.

This is the simulation and benchmarking engine. Every message still crosses the in-process
transport as bytes, so sizes are honest and parsing always runs. The Flower transport drives
the same two classes, :class:`~fedshield.engine.site.SiteRuntime` (in each site's process)
and :class:`~fedshield.engine.server_round.ServerRound` (in the ``ServerApp``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from fedshield.aggregation import ServerOptimizer
from fedshield.engine.compression import Compression, UpdateCompressor
from fedshield.engine.dp import with_distributed_noise, worst_spent
from fedshield.engine.dropout import DropoutPolicy
from fedshield.engine.evaluation import SiteEvaluation, pool_evaluations
from fedshield.engine.global_model import GlobalModel, he_round_start
from fedshield.engine.paramspec import ParamSpec
from fedshield.engine.runner import enrol, setup_protocol
from fedshield.engine.secure_eval import (
    count_spec,
    counts_client,
    drive_counts,
    own_metrics,
    pool_secure,
)
from fedshield.engine.server_round import RoundRecord, RoundTiming, ServerRound
from fedshield.engine.site import Site, SiteRuntime
from fedshield.engine.trainer import Algorithm, LocalTrainer
from fedshield.engine.transport import InProcessTransport
from fedshield.errors import ConfigError, InvalidMessage, NonFiniteValues
from fedshield.privacy import DPConfig
from fedshield.protocols.registry import ProtocolSpec, get_protocol

__all__ = ["Federation"]


class Federation:
    """Runs federated rounds over in-process sites.

    Args:
        model_factory: returns a fresh ``nn.Module`` (the class, or a lambda; called once).
        sites: the participating sites (:func:`~fedshield.engine.site.make_site`).
        algorithm: ``Algorithm("fedavg" | "fedsgd" | "fedprox" | "fedbn", ...)``.
        trainer: the local training loop (or the user's ``train_fn``), or one per site (a
            :class:`~fedshield.engine.client_algo.ClientAlgoTrainer` for a site whose MONAI
            ``ClientAlgo`` holds its own data and loop).
        protect: a protocol name (``plain``, ``secagg``, ``he`` with default options and the
            sites' largest weight) or a spec from :func:`~fedshield.protocols.get_protocol`.
        server_opt: server optimizer on the trainable part; ``None`` is plain FedAvg.
        dropout: simulated dropouts per stage.
        local_epochs: local epochs per round (FedSGD ignores it).
        compression: the chain before protection (sparsification, error feedback).
        seed: seeds model initialisation, rand-k and stochastic rounding.
        privacy: site-level DP-FedAvg (:class:`~fedshield.privacy.DPConfig`): sites clip
            (and under ``local`` noise) their updates and send them with weight 1; under
            ``central`` the server noises the sum; under ``distributed`` the sites add
            integer noise inside ``secagg`` or ``he``.

    Example:
        >>> fed = Federation(model_factory=MyNet, sites=[make_site(d) for d in data])
        >>> record = fed.run_round()
    """

    def __init__(
        self,
        *,
        model_factory: Callable[[], nn.Module],
        sites: Sequence[Site],
        algorithm: Algorithm | None = None,
        trainer: LocalTrainer | Sequence[LocalTrainer] | None = None,
        protect: str | ProtocolSpec = "plain",
        server_opt: ServerOptimizer | None = None,
        dropout: DropoutPolicy | None = None,
        local_epochs: int = 1,
        compression: Compression | None = None,
        seed: int = 0,
        privacy: DPConfig | None = None,
    ) -> None:
        _check_arguments(model_factory, sites, algorithm, trainer, dropout, local_epochs, seed)
        _check_protect(protect)
        self.sites = list(sites)
        self.algorithm = algorithm or Algorithm()
        trainers = trainer if _per_site(trainer) else [trainer] * len(self.sites)
        self.trainers = [t or LocalTrainer() for t in trainers]
        if isinstance(protect, str):  # every weight is 1 under DP
            weight = 1.0 if privacy is not None else max(s.weight for s in self.sites)
            protect = get_protocol(protect, max_weight=weight, sites=len(self.sites))
        _check_privacy(privacy, protect)
        torch.manual_seed(seed)
        self.model = _build_model(model_factory)  # one workspace, shared by the runtimes
        bn_local = self.algorithm.exclude_batchnorm
        self.spec = ParamSpec.from_module(self.model, exclude_batchnorm=bn_local)
        compression = _chain(compression, self.algorithm)

        def compressor() -> UpdateCompressor:
            return UpdateCompressor(
                compression, dim=self.spec.dim, seed=seed, n_trainable=self.spec.n_trainable
            )

        shared = compressor()
        protect = _bind_to_updates(protect, privacy, shared, len(self.sites))
        ids = list(range(len(self.sites)))
        # enrolment: a fresh identity per site and the roster every site holds
        self.roster, identities = enrol(protect, ids)
        protect = protect.with_roster(self.roster)
        protect = setup_protocol(
            protect, clients=ids, dim=shared.protocol_dim, tensors=len(self.spec.sizes),
            identities=identities,
        )  # fmt: skip
        model = GlobalModel(
            spec=self.spec, vector=self.spec.flatten(self.model), server_opt=server_opt,
            compressor=shared, adaptive_ranges=protect.adaptive,
        )  # fmt: skip
        self.server = ServerRound(
            protocol=protect, model=model, n_sites=len(ids), dropout=dropout, privacy=privacy
        )
        self.runtimes = [
            SiteRuntime(site_id=i, site=site, model=self.model, spec=self.spec, protocol=protect,
                        algorithm=self.algorithm, trainer=trainer, local_epochs=local_epochs,
                        compressor=compressor(), identity=identities[i], privacy=privacy)
            for i, (site, trainer) in enumerate(zip(self.sites, self.trainers, strict=True))
        ]  # fmt: skip

    @property
    def round(self) -> int:
        """The round that runs next (from 1)."""
        return self.server.round

    @property
    def protocol(self) -> ProtocolSpec:
        """The protection, with its options bound."""
        return self.server.protocol

    @property
    def global_vector(self) -> np.ndarray:
        """The global model's exchanged state."""
        return self.server.model.vector

    @property
    def local_states(self) -> list[dict[str, torch.Tensor]]:
        """Each site's tensors that never travel (FedBN's BatchNorm)."""
        return [runtime.local_state for runtime in self.runtimes]

    def run_round(self, on_site_done: Callable[[int], None] | None = None) -> RoundRecord:
        """Train every site, protect and aggregate their updates, update the global model."""
        start = time.perf_counter()
        broadcast = self.server.broadcast()
        round_start_bytes = self._round_start_bytes(broadcast)
        sessions, train_s = {}, {}
        for runtime in self.runtimes:
            t0 = time.perf_counter()
            try:
                sessions[runtime.site_id] = runtime.train(broadcast, self.round)
                train_s[runtime.site_id] = time.perf_counter() - t0
            except NonFiniteValues:
                pass  # its training diverged: it counts as dropped this round
            if on_site_done:
                on_site_done(runtime.site_id)
        if not sessions:
            raise NonFiniteValues(
                f"round {self.round}: every site's local training diverged (NaN or infinite "
                "weights); lower --lr"
            )
        outcome, server = self.server.drive(InProcessTransport(sessions), list(sessions))
        for runtime in self.runtimes:
            if runtime.site_id in sessions:
                runtime.conclude(sessions[runtime.site_id])
        aggregate_s = self.server.apply(outcome, sessions)
        record = self.server.record(
            outcome,
            server,
            evaluation=self._evaluation(),
            broadcast_bytes=round_start_bytes,
            timing=RoundTiming(start=start, site_train_s=train_s, aggregate_s=aggregate_s),
        )
        trainers = {id(t): t for t in self.trainers}.values()  # a shared one counts once
        spent = [s for s in (t.privacy_spent() for t in trainers) if s is not None]
        if spent:  # record-level DP-SGD at the sites
            record.privacy = worst_spent(spent)
        return record

    def _round_start_bytes(self, broadcast: bytes) -> int:
        """What starting the round sends each site in a deployment: the model broadcast, or
        under ``he``, whose sites hold the model, the round-start message
        (:func:`~fedshield.engine.global_model.he_round_start`). In process the sites are
        handed the broadcast either way."""
        if self.protocol.name != "he":
            return len(broadcast)
        return len(he_round_start(self.round, self.server.last_aggregate_round))

    def finalize(self) -> None:
        """End the federation: each site's runtime (and ``ClientAlgo``) is finalized."""
        for runtime in self.runtimes:
            runtime.finalize()

    def _evaluation(self) -> tuple[dict, dict[str, dict]]:
        """:meth:`evaluate`, never raising: the aggregate is applied, so the round's record
        must be written (with the error) whatever the evaluation does."""
        try:
            return self.evaluate()
        except Exception as exc:  # pooling itself failed: recorded, not raised
            reason = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"round {self.round}: evaluation failed ({reason})", stacklevel=2)
            return {**pool_evaluations({})[0], "error": reason}, {}

    def evaluate(self) -> tuple[dict, dict[str, dict]]:
        """Pooled and per-site test metrics of the model each site would deploy now: the
        global model plus, under FedBN, its own BatchNorm layers. A site whose evaluation
        fails (a user's model or loss, say) is reported under its name with the error; the
        others are pooled, and the round's record is written all the same. Under ``secagg``
        the summaries are summed in a count session (:mod:`~fedshield.engine.secure_eval`)."""
        evaluations, failed = {}, {}
        for runtime in self.runtimes:
            try:
                evaluation = runtime.evaluate(self.global_vector)
            except Exception as exc:  # any user code: reported under its name, not lost
                failed[runtime.site.name] = f"{type(exc).__name__}: {exc}"
                continue
            if evaluation is not None:
                evaluations[runtime.site_id] = evaluation
        spec = count_spec(self.protocol)
        summaries = all(isinstance(e, SiteEvaluation) for e in evaluations.values())
        if spec is not None and evaluations and summaries:
            return self._pool_securely(spec, evaluations, failed)
        for cid, evaluation in evaluations.items():
            if isinstance(evaluation, SiteEvaluation):  # through what a Flower site sends
                evaluations[cid] = SiteEvaluation.parse(
                    evaluation.summary.to_vector(), evaluation.metrics_bytes(),
                    classes=evaluation.summary.classes,
                )  # fmt: skip
        names = {cid: self.runtimes[cid].site.name for cid in evaluations}
        return pool_evaluations({names[c]: e for c, e in evaluations.items()}, failed)

    def _pool_securely(
        self, spec: ProtocolSpec, evaluations: dict[int, SiteEvaluation], failed: dict
    ) -> tuple[dict, dict[str, dict]]:  # fmt: skip
        """The summaries' counts summed in a SecAgg+ count session, in process: each site's
        own metrics and masked counts go through the bytes a Flower site sends."""
        classes = next(iter(evaluations.values())).summary.classes
        sessions, own = {}, {}
        for cid, evaluation in evaluations.items():
            runtime = self.runtimes[cid]
            try:
                own[cid] = (runtime.site.name, own_metrics(evaluation.metrics_bytes()))
                sessions[cid] = counts_client(spec, site_id=cid, round=self.round,
                                              summary=evaluation.summary,
                                              identity=runtime.identity)  # fmt: skip
            except (ConfigError, InvalidMessage) as exc:  # refused at the site: not sent
                own.pop(cid, None)
                failed[runtime.site.name] = f"{type(exc).__name__}: {exc}"
        outcome = drive_counts(spec, InProcessTransport(sessions), round=self.round,
                               clients=sorted(sessions), classes=classes)  # fmt: skip
        return pool_secure(outcome, own, failed, classes=classes, protection=spec.name)


def _build_model(model_factory: Callable[[], nn.Module]) -> nn.Module:
    model = model_factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model_factory must return a torch nn.Module, got {type(model).__name__}")
    return model


def _check_arguments(model_factory, sites, algorithm, trainer, dropout, local_epochs, seed):
    """Federation's argument checks: TypeError for a wrong type, ValueError for a bad value."""
    if isinstance(model_factory, nn.Module) or not callable(model_factory):
        raise TypeError(
            "model_factory must be a callable that returns a fresh nn.Module (pass the class, "
            f"e.g. model_factory=MyNet, or a lambda), not {type(model_factory).__name__!s} "
            "instance"
        )
    if isinstance(sites, str | bytes) or not isinstance(sites, Sequence) or not sites:
        raise ValueError("sites must be a non-empty list of Site (make_site(SiteData))")
    bad = [type(s).__name__ for s in sites if not isinstance(s, Site)]
    if bad:
        raise TypeError(f"sites must hold Site objects (make_site(SiteData)), got {bad[0]}")
    if algorithm is not None and not isinstance(algorithm, Algorithm):
        raise TypeError(
            f"algorithm must be an Algorithm, e.g. Algorithm({algorithm!r}), got "
            f"{type(algorithm).__name__}"
        )
    trainers = trainer if _per_site(trainer) else [trainer]
    if _per_site(trainer) and len(trainer) != len(sites):
        raise ValueError(f"give one trainer per site ({len(sites)}), got {len(trainer)}")
    bad = [type(t).__name__ for t in trainers if t is not None and not isinstance(t, LocalTrainer)]
    if bad:
        raise TypeError(f"trainer must be a LocalTrainer (or one per site), got {bad[0]}")
    if dropout is not None and not isinstance(dropout, DropoutPolicy):
        raise TypeError(f"dropout must be a DropoutPolicy or None, got {type(dropout).__name__}")
    for name, value, low in (("local_epochs", local_epochs, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value < low:
            raise ValueError(f"{name} must be at least {low}, got {value}")


def _chain(compression: Compression | None, algorithm: Algorithm) -> Compression:
    """The compression chain as ``algorithm``'s sites run it (a wrong type passes through for
    ``UpdateCompressor`` to name)."""
    compression = compression or Compression()
    if isinstance(compression, Compression):
        return compression.for_algorithm(algorithm.name)
    return compression


def _per_site(trainer) -> bool:
    """Whether ``trainer`` is one trainer per site (a list), not one for all."""
    return isinstance(trainer, Sequence) and not isinstance(trainer, str | bytes)


def _check_protect(protect) -> None:
    if not isinstance(protect, str | ProtocolSpec):
        raise TypeError(
            "protect must be a protocol name ('plain', 'secagg', 'he') or a ProtocolSpec "
            f"from get_protocol(name, ...), got {type(protect).__name__}"
        )


def _bind_to_updates(
    protect: ProtocolSpec, privacy: DPConfig | None, shared: UpdateCompressor, sites: int
) -> ProtocolSpec:  # fmt: skip
    """``protect`` bound to the updates the compressor makes: top-k's size, and distributed
    DP's encoding of their length."""
    if shared.compression.sparsify == "topk":
        protect = protect.with_topk(shared.k)
    return with_distributed_noise(protect, privacy, dim=shared.protocol_dim, sites=sites)


def _check_privacy(privacy: DPConfig | None, protect: ProtocolSpec) -> None:
    """Central noise needs the exact sum of clipped updates: no quantizing protection."""
    if privacy is None or privacy.mode != "central":
        return
    if protect.name != "plain" or protect.describe().get("quant_bits"):
        raise ConfigError(
            f"central DP noise needs the exact sum of clipped updates, but {protect.name} "
            "quantizes them (which can push one past the clip): use plain float32, or local DP"
        )
