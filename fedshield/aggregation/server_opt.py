"""Server optimizers on flat vectors: plain update, FedAdagrad, FedAdam, FedYogi.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2. The mean client delta
``Δ`` is the pseudo-gradient's negative: ``m ← β1·m + (1-β1)·Δ``, ``v`` updated per rule, and
``x ← x + η·m / (√v + τ)``. Under HE every client holds the same aggregate, so each can run the
same optimizer and stay in step.
"""

from __future__ import annotations

import numpy as np

from fedshield.errors import ConfigError

__all__ = ["SERVER_OPTIMIZERS", "FedAdagrad", "FedAdam", "FedYogi", "ServerOptimizer", "build"]


class ServerOptimizer:
    """Plain server update ``x ← x + η·Δ`` (η = 1 is FedAvg). Subclasses add adaptivity."""

    name = "none"
    default_lr = 1.0

    def __init__(self, *, lr: float | None = None) -> None:
        lr = self.default_lr if lr is None else float(lr)
        if not np.isfinite(lr) or lr <= 0:
            raise ValueError(f"server learning rate must be positive, got {lr}")
        self.lr = lr

    def step(self, params: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Return the new parameters given the current ones and the mean client delta."""
        params, delta = _check(params, delta)
        return (params + self.lr * delta).astype(np.float32)


class _Adaptive(ServerOptimizer):
    default_lr = 1e-2

    def __init__(
        self, *, lr: float | None = None, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        super().__init__(lr=lr)
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1 and tau > 0):
            raise ValueError("need 0 <= beta1, beta2 < 1 and tau > 0")
        self.beta1, self.beta2, self.tau = beta1, beta2, tau
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None

    def step(self, params: np.ndarray, delta: np.ndarray) -> np.ndarray:
        params, delta = _check(params, delta)
        d = delta.astype(np.float64)
        if self.m is None:
            self.m = np.zeros_like(d)
            self.v = np.full_like(d, self.tau**2)
        self.m = self.beta1 * self.m + (1 - self.beta1) * d
        self.v = self._second_moment(self.v, d * d)
        return (params + self.lr * self.m / (np.sqrt(self.v) + self.tau)).astype(np.float32)

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class FedAdagrad(_Adaptive):
    """FedAdagrad: ``v ← v + Δ²``."""

    name = "adagrad"

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return v + d2


class FedAdam(_Adaptive):
    """FedAdam: ``v ← β2·v + (1-β2)·Δ²``."""

    name = "adam"

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1 - self.beta2) * d2


class FedYogi(_Adaptive):
    """FedYogi: ``v ← v - (1-β2)·Δ²·sign(v - Δ²)``."""

    name = "yogi"

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return v - (1 - self.beta2) * d2 * np.sign(v - d2)


SERVER_OPTIMIZERS = {cls.name: cls for cls in (ServerOptimizer, FedAdagrad, FedAdam, FedYogi)}


def build(name: str, *, lr: float | None = None) -> ServerOptimizer:
    """The server optimizer called ``name`` (``none``, ``adagrad``, ``adam``, ``yogi``)."""
    try:
        return SERVER_OPTIMIZERS[name](lr=lr)
    except KeyError:
        raise ConfigError(
            f"unknown server optimizer {name!r}; choose one of {sorted(SERVER_OPTIMIZERS)}"
        ) from None


def _check(params: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    params, delta = np.asarray(params), np.asarray(delta)
    if params.shape != delta.shape or params.ndim != 1:
        raise ValueError(f"params {params.shape} and delta {delta.shape} must be equal flat shapes")
    return params, delta
