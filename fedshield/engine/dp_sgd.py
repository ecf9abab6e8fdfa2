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
sampler); over the planned rounds that is ``rounds * epochs * b`` steps. With
``--dp-epsilon`` each site calibrates its own ``sigma`` for its own ``b``; the round record
carries the largest epsilon any site has spent.
"""

from __future__ import annotations

import math
import secrets
import warnings

import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.validators import ModuleValidator
from torch import nn

from fedshield.engine.trainer import LocalTrainer
from fedshield.errors import ConfigError
from fedshield.privacy import calibrate_noise, epsilon

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
        rounds, epochs: the planned rounds and local epochs (the calibration's horizon).
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
        self._sigmas: dict[int, float] = {}  # batches per epoch -> noise multiplier

    def sigma_for(self, batches: int) -> float:
        """The noise multiplier of a site with ``batches`` batches per epoch."""
        if batches not in self._sigmas:
            if self.target_epsilon is None:
                self._sigmas[batches] = float(self.noise_multiplier)
            else:
                steps = self.rounds * self.epochs * batches
                self._sigmas[batches] = calibrate_noise(
                    self.target_epsilon, self.delta, steps, sampling_rate=1 / batches
                )
        return self._sigmas[batches]

    def privacy(self, rounds: int) -> dict | None:
        """The largest epsilon any site spent after ``rounds`` rounds, with the parameters."""
        if not self._sigmas:
            return None
        spent = max(
            epsilon(sigma, rounds * self.epochs * b, self.delta, sampling_rate=1 / b)
            for b, sigma in self._sigmas.items()
        )
        return {
            "dp_mode": "dp-sgd",
            "clip": self.clip,
            "noise_multiplier": max(self._sigmas.values()),
            "delta": self.delta,
            "epsilon": spent if math.isfinite(spent) else None,
        }

    def fit(self, model: nn.Module, loader, epochs: int, *, prox_mu: float | None = None):
        """``epochs`` of DP-SGD over Poisson-sampled batches of ``loader``'s data."""
        if prox_mu:
            raise ConfigError("--dp-sgd trains fedavg and fedbn-free models: not fedprox")
        sigma = self.sigma_for(len(loader))
        sampled = DPDataLoader.from_data_loader(loader, generator=_csprng_generator())
        model.train()  # Opacus validates the module in training mode
        with warnings.catch_warnings():  # Opacus warns about its (unused) secure mode
            warnings.simplefilter("ignore")
            module, optimizer, sampled = PrivacyEngine().make_private(
                module=model, optimizer=self.optimizer_factory(model.parameters()),
                data_loader=sampled, noise_multiplier=sigma, max_grad_norm=self.clip,
                poisson_sampling=False, noise_generator=_csprng_generator(),
            )  # fmt: skip
        try:
            return self._steps(module, optimizer, sampled, epochs)
        finally:
            module._close()  # the hooks go: the same model trains again next round

    def _steps(self, module, optimizer, loader, epochs: int) -> dict:
        module.train()
        total, count = 0.0, 0
        for _ in range(epochs):
            for x, y in loader:
                if len(y) == 0:  # an empty Poisson batch (counted as a step: conservative)
                    continue
                optimizer.zero_grad()
                loss = self.loss_fn(module(x), y)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(y)
                count += len(y)
        return {"train_loss": total / max(count, 1), "samples": count}
