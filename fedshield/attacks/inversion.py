"""Gradient inversion by an honest-but-curious server.

The server holds the model it broadcast and sees an update (one site's under ``plain``, the
sum under ``secagg``). It optimises dummy images until the update they would produce matches
the one it saw: Zhu et al., "Deep Leakage from Gradients" (NeurIPS 2019), with the cosine
distance, total variation, box constraint, signed Adam steps, step decay and restarts of
Geiping et al., "Inverting Gradients" (NeurIPS 2020, Sec. 4), and the label read from the last
layer's bias gradient (Zhao et al., "iDLG", 2020: at batch 1 only the true class's entry is
negative).

A plaintext update carries more than the weights' gradient: a BatchNorm layer in train mode
moves its running statistics by ``momentum * (batch statistic - running statistic)``, so the
update reveals every BatchNorm layer's batch mean and variance. At batch 1 train-mode
normalisation makes the gradient nearly blind to the image's intensity and contrast; the first
layer's statistics give them back. :func:`invert` matches them too (``bn_weight``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from fedshield._validate import check_instance, check_int, check_real
from fedshield.engine.paramspec import ParamSpec
from fedshield.errors import ConfigError

__all__ = ["InversionConfig", "ObservedUpdate", "Reconstruction", "infer_labels", "invert"]


@dataclass(frozen=True)
class ObservedUpdate:
    """An update as the server sees it, with what it knows besides.

    Args:
        model: the network the sites trained (any weights; ``start`` is loaded into a copy).
        spec: which tensors the update vector holds.
        start: the model vector the server broadcast.
        delta: the update it saw: a site's ``new - start``, or the weighted mean of the
            sites' updates that a secure sum reveals.
        image_shape: ``(C, H, W)`` of the sites' images (public: the task's format).
        local_steps: optimizer steps the site took (FedSGD: 1); decodes the running
            statistics, which move by ``1 - (1 - momentum) ** steps`` of the way.
    """

    model: nn.Module
    spec: ParamSpec
    start: np.ndarray
    delta: np.ndarray
    image_shape: tuple[int, int, int]
    local_steps: int = 1

    def __post_init__(self) -> None:
        check_instance("model", self.model, nn.Module)
        check_instance("spec", self.spec, ParamSpec)
        for name in ("start", "delta"):
            value = getattr(self, name)
            check_instance(name, value, np.ndarray)
            if value.shape != (self.spec.dim,) or not np.isfinite(value).all():
                raise ConfigError(
                    f"{name} must be {self.spec.dim} finite values, got {value.shape}"
                )
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ConfigError(f"image_shape must be (C, H, W), got {self.image_shape}")
        check_int("local_steps", self.local_steps, low=1, error=ConfigError)


@dataclass(frozen=True)
class InversionConfig:
    """The attack's knobs (defaults: what reached 20+ dB on BreastMNIST, ``docs/attacks.md``).

    Args:
        steps: optimisation steps per restart.
        restarts: independent random starts; the one matching the update best is kept.
        lr: Adam's step size on the images (signed gradients, decayed x0.1 at 3/8, 5/8, 7/8).
        tv_weight: total variation's weight (the image prior).
        bn_weight: weight of the BatchNorm batch-statistics match (0: gradient only).
        bn_mode: ``train`` (how the sites train: batch statistics) or ``eval``.
        groups: the update is the mean of this many separate forward passes (sites of a
            secure sum, each normalising its own batch); the images split evenly among them.
        signed: step on the sign of the images' gradient (Geiping et al.) or on the
            gradient itself.
        layerwise: average one cosine per tensor instead of one over the whole update.
        combine: ``mean`` averages the restarts' images (paired by squared error): their
            errors differ, so the mean is closer to the truth than any one (measured: +1.5
            dB); ``best`` keeps the restart with the lowest loss.
        seed: seeds the dummy images.
    """

    steps: int = 1000
    restarts: int = 4
    lr: float = 0.1
    tv_weight: float = 1e-3
    bn_weight: float = 1000.0
    bn_mode: str = "train"
    groups: int = 1
    signed: bool = True
    layerwise: bool = False
    combine: str = "mean"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "restarts", "groups"):
            check_int(name, getattr(self, name), low=1, error=ConfigError)
        check_real("lr", self.lr, error=ConfigError)
        for name in ("tv_weight", "bn_weight"):
            if check_real(name, getattr(self, name), positive=False, error=ConfigError) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.bn_mode not in ("train", "eval"):
            raise ConfigError(f"bn_mode must be train or eval, got {self.bn_mode!r}")
        if self.combine not in ("mean", "best"):
            raise ConfigError(f"combine must be mean or best, got {self.combine!r}")
        check_int("seed", self.seed, low=0, error=ConfigError)


@dataclass
class Reconstruction:
    """The dummy images that best matched the update, ``(N, C, H, W)`` in [0, 1]."""

    images: np.ndarray
    labels: np.ndarray
    loss: float
    seconds: float
    losses: list[float] = field(default_factory=list)  # the final loss of every restart


def _head_bias(model: nn.Module, spec: ParamSpec) -> str:
    """The name of the last linear layer's bias (the logits' bias) in ``spec``."""
    names = [f"{n}.bias" for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    names = [n for n in names if n in spec.names]
    if not names:
        raise ConfigError("label inference needs a final nn.Linear layer with a bias")
    return names[-1]


def infer_labels(observed: ObservedUpdate, count: int = 1) -> np.ndarray:
    """The labels of a batch from the logits' bias gradient (iDLG, Zhao et al. 2020).

    With cross-entropy, that gradient is ``mean(softmax - onehot)``; the update is ``-lr``
    times it, so the classes with the largest update entries were the labels. Exact at batch
    1; for ``count > 1`` the ``count`` largest entries (a guess when classes repeat).
    """
    check_int("count", count, low=1, error=ConfigError)
    entry = next(
        e for e in observed.spec.entries if e.name == _head_bias(observed.model, observed.spec)
    )
    pushed = observed.delta[entry.offset : entry.offset + entry.size]
    order = np.argsort(-pushed, kind="stable")
    return np.sort(order[np.arange(count) % len(order)]).astype(np.int64)


def _observed_targets(observed: ObservedUpdate, model: nn.Module):
    """The gradient direction (``-delta`` per trainable tensor) and, per BatchNorm layer in
    the spec, the batch mean and standard deviation its running statistics imply."""
    params = [(n, p) for n, p in model.named_parameters() if n in observed.spec.names]
    grads = [-chunk(observed.delta, observed.spec, n).reshape(p.shape) for n, p in params]
    return [p for _, p in params], grads, observed_stats(observed, model)


def chunk(vector: np.ndarray, spec: ParamSpec, name: str) -> torch.Tensor:
    """Tensor ``name``'s entries of a flat ``spec`` vector, as a float32 torch vector."""
    e = next(e for e in spec.entries if e.name == name)
    return torch.from_numpy(np.array(vector[e.offset : e.offset + e.size], np.float32))


def bn_layers(model: nn.Module, spec: ParamSpec) -> dict[str, _BatchNorm]:
    """The BatchNorm layers whose running mean and variance both travel in ``spec``."""
    return {
        name: m for name, m in model.named_modules()
        if isinstance(m, _BatchNorm)
        and {f"{name}.running_mean", f"{name}.running_var"} <= set(spec.names)
    }  # fmt: skip


def decode_stats(start_mean, start_var, moved_mean, moved_var, momentum: float, steps: int):
    """The batch ``(mean, std)`` a BatchNorm layer's running statistics imply: after ``steps``
    train-mode steps on steady statistics they moved ``1 - (1 - momentum) ** steps`` of the
    way from ``start_*`` (``moved_*``: the running statistics' deltas)."""
    moved = 1.0 - (1.0 - momentum) ** steps
    var = start_var + moved_var / moved
    return start_mean + moved_mean / moved, var.clamp_min(0).sqrt()


def observed_stats(observed: ObservedUpdate, model: nn.Module) -> dict:
    """Per BatchNorm layer of the spec, the batch mean and std that ``observed`` implies."""
    spec, start, delta = observed.spec, observed.start, observed.delta
    stats = {}
    for name, module in bn_layers(model, spec).items():
        keys = (f"{name}.running_mean", f"{name}.running_var")
        stats[name] = decode_stats(
            chunk(start, spec, keys[0]), chunk(start, spec, keys[1]),
            chunk(delta, spec, keys[0]), chunk(delta, spec, keys[1]),
            module.momentum or 0.1, observed.local_steps,
        )  # fmt: skip
    return stats


def record_batch_stats(model: nn.Module, names: set[str]):
    """Forward hooks recording each named BatchNorm layer's input batch mean and (unbiased)
    variance, once per forward pass; returns the record and the hooks' handles."""
    recorded: dict[str, list] = {n: [] for n in names}
    handles = []
    for name, module in model.named_modules():
        if name in names:

            def hook(_m, inputs, _out, name=name):
                x = inputs[0]
                dims = [0, *range(2, x.dim())]
                recorded[name].append((x.mean(dims), x.var(dims, unbiased=True)))

            handles.append(module.register_forward_hook(hook))
    return recorded, handles


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """The mean absolute difference of neighbouring pixels, down plus across (the prior)."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (
        x[..., :, 1:] - x[..., :, :-1]
    ).abs().mean()


def update_distance(dummy, target, layerwise: bool) -> torch.Tensor:
    """``1 - cos(dummy, target)`` of two lists of tensors: one cosine over them all (Geiping
    et al., Eq. 4), or with ``layerwise`` the mean of one cosine per tensor."""
    if layerwise:
        cosines = [F.cosine_similarity(d.flatten(), g.flatten(), dim=0, eps=1e-12)
                   for d, g in zip(dummy, target, strict=True)]  # fmt: skip
        return 1.0 - torch.stack(cosines).mean()
    dot = sum((d * g).sum() for d, g in zip(dummy, target, strict=True))
    norms = sum((d * d).sum() for d in dummy).sqrt() * sum((g * g).sum() for g in target).sqrt()
    return 1.0 - dot / norms.clamp_min(1e-12)


def stats_error(got: dict, want: dict) -> torch.Tensor | float:
    """The relative squared error of each layer's batch ``(mean, std)``, summed over layers."""
    total = 0.0
    for name, (mean, std) in want.items():
        scale = (mean * mean).sum() + (std * std).sum() + 1e-8
        error = ((got[name][0] - mean) ** 2).sum() + ((got[name][1] - std) ** 2).sum()
        total = total + error / scale
    return total


def _match_loss(model, params, grads, stats, x, labels, config: InversionConfig):
    """``1 - cos(dummy gradient, observed)`` + BatchNorm statistics + TV, for images ``x``."""
    recorded, handles = record_batch_stats(model, set(stats) if config.bn_weight else set())
    try:
        losses = [
            F.cross_entropy(model(xg), yg)
            for xg, yg in zip(x.chunk(config.groups), labels.chunk(config.groups), strict=True)
        ]
    finally:
        for h in handles:
            h.remove()
    dummy = torch.autograd.grad(torch.stack(losses).mean(), params, create_graph=True)
    loss = update_distance(dummy, grads, config.layerwise)
    if config.bn_weight:
        got = {
            name: (torch.stack([m for m, _ in seen]).mean(0),
                   torch.stack([v.sqrt() for _, v in seen]).mean(0))
            for name, seen in recorded.items()
        }  # fmt: skip
        loss = loss + config.bn_weight * stats_error(got, stats)
    return loss + config.tv_weight * total_variation(x)


def _one_restart(loss_of, shape, config: InversionConfig, generator):
    """One random start optimised on ``loss_of(images)``: Geiping et al.'s signed Adam, step
    decay x0.1 at 3/8, 5/8 and 7/8 of the steps, images clamped to [0, 1]."""
    x = torch.rand(shape, generator=generator).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=config.lr)
    milestones = [int(config.steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    for _ in range(config.steps):
        optimizer.zero_grad()
        (x.grad,) = torch.autograd.grad(loss_of(x), [x])
        if config.signed:
            x.grad.sign_()  # Geiping et al.: signed gradients
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            x.clamp_(0.0, 1.0)
    return x.detach(), float(loss_of(x).detach())


def run_restarts(loss_of, shape, labels: np.ndarray, config: InversionConfig) -> Reconstruction:
    """``config.restarts`` random starts optimised on ``loss_of``, combined as ``config`` says
    (the restarts' aligned mean, or the lowest-loss one)."""
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    runs = [_one_restart(loss_of, shape, config, generator) for _ in range(config.restarts)]
    runs.sort(key=lambda run: run[1])
    images = runs[0][0].numpy()
    if config.combine == "mean":
        images = _aligned_mean([r[0].numpy() for r in runs], config.groups)
    return Reconstruction(
        images=images, labels=labels, loss=runs[0][1],
        seconds=time.perf_counter() - start, losses=[r[1] for r in runs],
    )  # fmt: skip


def attack_labels(observed, count: int, labels, config: InversionConfig) -> np.ndarray:
    """Check ``count`` against the groups; the given labels checked, or inferred (iDLG)."""
    check_instance("observed", observed, ObservedUpdate)
    check_int("count", count, low=1, error=ConfigError)
    if count % config.groups:
        raise ConfigError(f"count {count} must be a multiple of groups {config.groups}")
    labels = infer_labels(observed, count) if labels is None else np.asarray(labels, np.int64)
    if labels.shape != (count,):
        raise ConfigError(f"labels must be {count} class indices, got shape {labels.shape}")
    return labels


def invert(
    observed: ObservedUpdate,
    *,
    count: int = 1,
    labels: np.ndarray | None = None,
    config: InversionConfig | None = None,
) -> Reconstruction:
    """Reconstruct ``count`` images from ``observed`` (Geiping et al. 2020, Sec. 4).

    Args:
        observed: the update and what the server knows about it.
        count: how many images to reconstruct (a multiple of ``config.groups``).
        labels: their labels if the server knows them; ``None`` infers them
            (:func:`infer_labels`).
        config: the attack's knobs.

    Returns:
        The reconstruction (``combine``: the restarts' mean, or the lowest-loss one), its
        labels and every restart's loss.

    Raises:
        ConfigError: ``count`` not a multiple of the groups, or labels of the wrong length.
    """
    config = config or InversionConfig()
    labels = attack_labels(observed, count, labels, config)
    model = copy_model(observed, config.bn_mode == "train")
    params, grads, stats = _observed_targets(observed, model)
    y = torch.from_numpy(labels)
    return run_restarts(
        lambda x: _match_loss(model, params, grads, stats, x, y, config),
        (count, *observed.image_shape), labels, config,
    )  # fmt: skip


def _aligned_mean(candidates: list[np.ndarray], groups: int) -> np.ndarray:
    """The pixel mean of the restarts' images, each restart's images first paired (within
    each group, where their order is arbitrary) with the best restart's by squared error."""
    from scipy.optimize import linear_sum_assignment

    reference = candidates[0]
    aligned = [reference]
    for images in candidates[1:]:
        order = np.arange(len(images))
        for part in np.array_split(order, groups):
            cost = ((reference[part, None] - images[None, part]) ** 2).mean(axis=(2, 3, 4))
            _, cols = linear_sum_assignment(cost)
            order[part] = part[cols]
        aligned.append(images[order])
    return np.mean(aligned, axis=0)


def copy_model(observed: ObservedUpdate, mode: bool) -> nn.Module:
    """A private copy of the model holding the broadcast weights, in the sites' BN mode."""
    import copy

    model = copy.deepcopy(observed.model)
    observed.spec.load_into(model, observed.start.astype(np.float32))
    for p in model.parameters():
        p.requires_grad_(True)
    return model.train(mode)
