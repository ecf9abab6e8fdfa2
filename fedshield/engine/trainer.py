"""Local training: a standard PyTorch loop that fedshield wraps, or the user's own.

Algorithms (what a site does with the global model each round):

- ``fedavg``: E local epochs (McMahan et al., AISTATS 2017).
- ``fedprox``: the same, with the proximal term ``mu/2 · ||w - w_global||²`` (Li et al., MLSys
  2020), added to the gradient after ``backward()``: ``grad += mu · (w - w_global)``.
- ``fedsgd``: one full-batch gradient of the local data and one SGD step; the server's average
  of those steps is the server SGD step on the sample-weighted mean gradient.
- ``fedbn``: FedAvg that never exchanges BatchNorm layers (Li et al., ICLR 2021).
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fedshield.engine.metrics import loss_targets
from fedshield.engine.subspace import Subspace
from fedshield.errors import ConfigError

__all__ = ["ALGORITHMS", "SUBSPACE_NEEDS_OUR_LOOP", "Algorithm", "LocalTrainer"]

SUBSPACE_NEEDS_OUR_LOOP = (
    "rand-k sites train only the round's kept coordinates, which needs fedshield's own loop "
    "(a train_fn, a ClientAlgo or a fit without a subspace argument owns its loop): use "
    "--train-all-coordinates (Compression(..., train_all=True)) to train every coordinate "
    "and send the kept ones"
)

ALGORITHMS = ("fedavg", "fedsgd", "fedprox", "fedbn")

TrainFn = Callable[[nn.Module, "torch.utils.data.DataLoader", int], dict]


@dataclass(frozen=True)
class Algorithm:
    """A federated algorithm and its knobs.

    Args:
        name: one of ``fedavg``, ``fedsgd``, ``fedprox``, ``fedbn``.
        mu: FedProx's proximal coefficient (ignored by the others).
        sgd_lr: FedSGD's step size.
    """

    name: str = "fedavg"
    mu: float = 0.0
    sgd_lr: float = 0.1

    def __post_init__(self) -> None:
        if self.name not in ALGORITHMS:
            raise ConfigError(f"unknown algorithm {self.name!r}; choose one of {ALGORITHMS}")
        for field_name in ("mu", "sgd_lr"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"Algorithm {field_name} must be a number, got {value!r}")
        if not (math.isfinite(self.mu) and self.mu >= 0):
            raise ConfigError(f"Algorithm mu must be finite and >= 0, got {self.mu}")
        if not (math.isfinite(self.sgd_lr) and self.sgd_lr > 0):
            raise ConfigError(f"Algorithm sgd_lr must be finite and > 0, got {self.sgd_lr}")

    @property
    def exclude_batchnorm(self) -> bool:
        """Whether normalisation layers with statistics (BatchNorm, InstanceNorm) stay local
        (FedBN)."""
        return self.name == "fedbn"


class LocalTrainer:
    """Runs a site's local work on a model.

    Either give ``loss_fn`` and ``optimizer_factory`` (fedshield runs the loop), or a callable
    ``train_fn(model, loader, epochs) -> metrics`` that trains ``model`` in place.
    ``evaluate_fn(model, test_loader) -> metrics`` replaces fedshield's evaluation at each
    site (its numeric metrics are reported per site and pooled as an ``n``-weighted mean when
    each gives ``n``, the site's number of test examples).

    Example:
        >>> trainer = LocalTrainer(optimizer_factory=lambda p: torch.optim.SGD(p, lr=0.1))
    """

    def __init__(
        self,
        *,
        loss_fn: nn.Module | None = None,
        optimizer_factory: Callable[..., torch.optim.Optimizer] | None = None,
        train_fn: TrainFn | None = None,
        evaluate_fn: Callable[[nn.Module, torch.utils.data.DataLoader], dict] | None = None,
    ) -> None:
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable (an nn.Module loss), got {loss_fn!r}")
        if isinstance(loss_fn, nn.BCELoss):
            raise ConfigError(
                "BCELoss takes probabilities, and fedshield's evaluation reads the model's "
                "logits: output one logit and use BCEWithLogitsLoss"
            )
        callables = (("optimizer_factory", optimizer_factory), ("train_fn", train_fn),
                     ("evaluate_fn", evaluate_fn))  # fmt: skip
        for name, value in callables:
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable, got {type(value).__name__}")
        self.loss_fn = loss_fn or nn.CrossEntropyLoss()
        self.optimizer_factory = optimizer_factory or (lambda p: torch.optim.Adam(p, lr=1e-3))
        self.train_fn = train_fn
        self.evaluate_fn = evaluate_fn

    def local_update(
        self, algorithm: Algorithm, model: nn.Module, loader, epochs: int, *,
        subspace: Subspace | None = None,
    ) -> dict[str, float]:  # fmt: skip
        """Do ``algorithm``'s local work on ``model`` (which holds the global weights), moving
        only the coordinates of ``subspace`` when one is given (rand-k's subspace training)."""
        if algorithm.name == "fedsgd":
            if self.train_fn is not None:
                raise ConfigError("fedsgd needs fedshield's own loop; drop train_fn to use it")
            if subspace is not None:
                raise ConfigError("fedsgd sends one gradient: it has no subspace training")
            return self.gradient_step(model, loader, lr=algorithm.sgd_lr)
        mu = algorithm.mu if algorithm.name == "fedprox" else None
        if self.train_fn is not None:
            if mu:
                raise ConfigError("fedprox with mu > 0 needs fedshield's own loop, not train_fn")
            if subspace is not None:
                raise ConfigError(SUBSPACE_NEEDS_OUR_LOOP)
            return dict(self.train_fn(model, loader, epochs) or {})
        if subspace is None:  # a subclass's fit may predate subspace training
            return self.fit(model, loader, epochs, prox_mu=mu)
        if not self.trains_subspaces:
            raise ConfigError(SUBSPACE_NEEDS_OUR_LOOP)
        return self.fit(model, loader, epochs, prox_mu=mu, subspace=subspace)

    @property
    def trains_subspaces(self) -> bool:
        """Whether this trainer can keep its local work to rand-k's kept coordinates: its
        loop is fedshield's (no ``train_fn``, no ClientAlgo) and its ``fit`` takes a
        ``subspace``."""
        own_loop = self.train_fn is None and not self.brings_data
        return own_loop and "subspace" in inspect.signature(self.fit).parameters

    def fit(
        self, model: nn.Module, loader, epochs: int, *, prox_mu: float | None = None,
        subspace: Subspace | None = None,
    ) -> dict:  # fmt: skip
        """``epochs`` passes over ``loader``; with ``prox_mu`` set, FedProx's proximal gradient;
        with ``subspace``, only its coordinates move, at its scaled learning rate."""
        before_step = None
        if prox_mu is not None:
            anchors = [p.detach().clone() for p in model.parameters()]

            def before_step() -> None:  # FedProx: grad += mu · (w - w_global)
                with torch.no_grad():
                    for p, p0 in zip(model.parameters(), anchors, strict=True):
                        if p.grad is not None:
                            p.grad.add_(p - p0, alpha=prox_mu)

        optimizer = self.optimizer_factory(model.parameters())
        after_step = None if subspace is None else subspace.hold(model)
        return self.run_epochs(model, optimizer, loader, epochs, before_step=before_step,
                               after_step=after_step)  # fmt: skip

    def run_epochs(
        self, model: nn.Module, optimizer, loader, epochs: int, *,
        before_step: Callable[[], None] | None = None,
        after_step: Callable[[], None] | None = None,
    ) -> dict:  # fmt: skip
        """The loop: ``epochs`` passes over ``loader``, one optimizer step per batch (an empty
        batch too), ``before_step`` after each backward, ``after_step`` after each step."""
        model.train()
        total, count = 0.0, 0
        for _ in range(epochs):
            for x, y in loader:
                optimizer.zero_grad()
                logits = model(x)
                loss = self.loss_fn(logits, loss_targets(self.loss_fn, logits, y))
                loss.backward()
                if before_step is not None:
                    before_step()
                optimizer.step()
                if after_step is not None:
                    after_step()
                if len(y):
                    total += loss.item() * len(y)
                    count += len(y)
        return {"train_loss": total / max(count, 1), "samples": count}

    brings_data = False  # a ClientAlgo reads its own data (engine/client_algo.py)

    def privacy_spent(self) -> dict | None:
        """The privacy this loop has spent so far (``None``: not private)."""
        return None

    def join(self, site: str) -> None:
        """Become ``site``'s trainer (a shared loop serves every site: nothing to do)."""

    def finalize(self) -> None:
        """Release what the loop holds once the federation is over (nothing here)."""

    def gradient_step(self, model: nn.Module, loader, *, lr: float) -> dict:
        """One SGD step with the sample-weighted mean gradient over the whole of ``loader``."""
        n = len(loader.dataset)
        model.train()
        model.zero_grad()
        total = 0.0
        for x, y in loader:
            logits = model(x)
            loss = self.loss_fn(logits, loss_targets(self.loss_fn, logits, y))
            (loss * (len(y) / n)).backward()
            total += loss.item() * len(y)
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p.add_(p.grad, alpha=-lr)
        return {"train_loss": total / max(n, 1), "samples": n}
