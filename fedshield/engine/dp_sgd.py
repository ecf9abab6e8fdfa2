"""Record-level DP-SGD inside each site's training, through Opacus (``--dp-sgd``).

Abadi et al., "Deep Learning with Differential Privacy", CCS 2016: every local step clips each
example's gradient to L2 norm ``C`` and adds Gaussian noise of standard deviation
``sigma * C`` to their sum, on a Poisson-sampled batch. Opacus does the per-sample work
(``PrivacyEngine.make_private``); the unit of privacy is one patient record of one site.
Both random streams (batch sampling and noise) come from generators seeded by the operating
system's CSPRNG: the run's ``--seed`` is known to the server and every site, and batch
sampling known to the adversary would void the amplification the accounting counts on.

Accounting (``dp-accounting``, :mod:`fedshield.privacy.accounting`): a site with ``b``
batches per epoch takes ``b`` Poisson-sampled steps at rate ``1 / b`` per epoch (Opacus's
sampler), so ``rounds * epochs * b`` steps over the planned rounds: with ``--dp-epsilon``
each site calibrates its own ``sigma`` for that. The accounting counts the steps each site
really took, an empty batch included (a noise-only step), and the round record carries the
largest epsilon any site has spent. Dataset sizes are public (they weigh FedAvg's mean).
"""

from __future__ import annotations

import secrets
import warnings
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.validators import ModuleValidator
from torch import nn

from fedshield.engine.subspace import Subspace
from fedshield.engine.trainer import LocalTrainer
from fedshield.errors import ConfigError
from fedshield.privacy import calibrate_noise, epsilon, spent_record

__all__ = ["DPSGDTrainer", "private_model"]


def private_model(model: nn.Module) -> nn.Module:
    """``model`` as Opacus can train it privately: BatchNorm replaced by GroupNorm
    (``ModuleValidator.fix``; BatchNorm mixes the examples of a batch), and in-place
    activations made out-of-place (Opacus's backward hooks cannot see through them)."""
    if ModuleValidator.validate(model, strict=False):
        model = ModuleValidator.fix(model)
    for module in model.modules():
        if getattr(module, "inplace", False):
            module.inplace = False
    return model


def _csprng_generator() -> torch.Generator:
    return torch.Generator().manual_seed(secrets.randbits(63))


class DPSGDTrainer(LocalTrainer):
    """A :class:`LocalTrainer` whose loop is DP-SGD (Opacus), with its accounting.

    Args:
        clip: ``C``, the per-example gradient bound.
        delta: the delta of the reported (epsilon, delta).
        rounds, epochs: the planned rounds and local epochs (the calibration's horizon; the
            accounting counts the steps each site really took).
        noise_multiplier: ``sigma``; or ``target_epsilon`` to calibrate it per site.
        loss_fn, optimizer_factory: as for :class:`LocalTrainer`.
    """

    def __init__(
        self, *, clip: float, delta: float, rounds: int, epochs: int,
        noise_multiplier: float | None = None, target_epsilon: float | None = None,
        loss_fn: nn.Module | None = None, optimizer_factory=None,
    ) -> None:  # fmt: skip
        super().__init__(loss_fn=loss_fn, optimizer_factory=optimizer_factory)
        if (noise_multiplier is None) == (target_epsilon is None):
            raise ConfigError("--dp-sgd needs exactly one of --dp-epsilon and --dp-noise")
        if not clip > 0:
            raise ConfigError(f"--dp-clip must be positive, got {clip}")
        self.clip, self.delta, self.rounds, self.epochs = clip, delta, rounds, epochs
        self.noise_multiplier, self.target_epsilon = noise_multiplier, target_epsilon
        self._sites: dict[int, _SiteSteps] = {}  # one per site's loader

    def local_update(
        self, algorithm, model: nn.Module, loader, epochs: int, *,
        subspace: Subspace | None = None,
    ) -> dict:  # fmt: skip
        """Refuses what would train without DP (FedSGD's full-batch step, a ``train_fn``)."""
        if algorithm.name == "fedsgd" or self.train_fn is not None:
            raise ConfigError("--dp-sgd runs its own loop: not fedsgd, nor a train_fn")
        return super().local_update(algorithm, model, loader, epochs, subspace=subspace)

    def _site(self, loader, batches: int) -> _SiteSteps:
        """The site whose loader this is: its sampling rate and noise multiplier."""
        if id(loader) not in self._sites:
            sigma = self.noise_multiplier
            if sigma is None:
                sigma = calibrate_noise(
                    self.target_epsilon, self.delta, self.rounds * self.epochs * batches,
                    sampling_rate=1 / len(loader), unit="DP-SGD steps",
                )  # fmt: skip
            self._sites[id(loader)] = _SiteSteps(1 / len(loader), float(sigma))
        return self._sites[id(loader)]

    def privacy_spent(self) -> dict | None:
        """The largest epsilon any site spent over the steps it took, with its sigma, and
        each site's ``(sigma, epsilon)``."""
        if not self._sites:
            return None
        spent = [
            (site.sigma, epsilon(site.sigma, site.steps, self.delta, sampling_rate=site.rate))
            for site in self._sites.values()
        ]
        sigma, worst = max(spent, key=lambda pair: pair[1])
        record = spent_record("dp-sgd", clip=self.clip, noise_multiplier=sigma,
                              delta=self.delta, epsilon=worst)  # fmt: skip
        return {**record, "per_site_sigma_epsilon": spent}

    def fit(
        self, model: nn.Module, loader, epochs: int, *, prox_mu: float | None = None,
        subspace: Subspace | None = None,
    ) -> dict:  # fmt: skip
        """``epochs`` of DP-SGD over Poisson-sampled batches of ``loader``'s data (only the
        coordinates of ``subspace`` move when one is given; the noise elsewhere is dropped)."""
        if prox_mu:
            raise ConfigError("--dp-sgd trains fedavg: not fedprox")
        sampled = DPDataLoader.from_data_loader(loader, generator=_csprng_generator())
        site = self._site(loader, len(sampled))
        model.train()  # Opacus validates the module in training mode
        with warnings.catch_warnings():  # Opacus warns about its (unused) secure mode
            warnings.simplefilter("ignore")
            module, optimizer, sampled = PrivacyEngine().make_private(
                module=model, optimizer=self.optimizer_factory(model.parameters()),
                data_loader=sampled, noise_multiplier=site.sigma, max_grad_norm=self.clip,
                poisson_sampling=False, noise_generator=_csprng_generator(),
            )  # fmt: skip
        try:
            with warnings.catch_warnings():  # torch, on the first layer's input: harmless
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                # every sampled batch is a step, an empty one too (Opacus then adds noise
                # alone): skipping it would leave the model unmoved with a probability the
                # data decides
                restore = None if subspace is None else subspace.hold(model)

                def after_step() -> None:
                    site.count_step()
                    if restore is not None:
                        restore()

                return self.run_epochs(module, optimizer, sampled, epochs,
                                       after_step=after_step)  # fmt: skip
        finally:
            module._close()  # the hooks go: the same model trains again next round


@dataclass
class _SiteSteps:
    """One site's DP-SGD: its Poisson sampling rate, noise multiplier and steps taken."""

    rate: float
    sigma: float
    steps: int = 0

    def count_step(self) -> None:
        self.steps += 1
