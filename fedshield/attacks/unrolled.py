"""Inverting a multi-step local update by simulating the site's local training.

A FedAvg site takes several optimizer steps before it sends ``new - old``; with Adam that
update is far from one gradient's direction. Geiping et al., "Inverting Gradients" (NeurIPS
2020, Sec. 5 and Fig. 5) attack it by running the site's known local steps on the dummy images
*differentiably* from the global model the server broadcast, and matching the simulated
update to the observed one. Here the simulation follows the engine's own loop
(:class:`~fedshield.engine.trainer.LocalTrainer`) exactly: the optimizer and its
hyper-parameters come from the trainer's ``optimizer_factory`` (built on the attack's copy of
the model and read back), the loss is the trainer's ``loss_fn``, BatchNorm runs in train mode
and moves its running statistics as torch does. The update equations are written out
(``torch.func.functional_call`` with weights that stay in the graph) so that gradients reach
the images. Matched with :mod:`.inversion`'s terms: the cosine of the updates, the batch
statistics the running-statistic deltas imply, total variation; same restarts and outer loop.

The site's whole local set is taken to be one batch of the loader (so its shuffling does not
matter): each step trains on all of a site's dummy images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from fedshield._validate import check_instance
from fedshield.attacks.inversion import (
    InversionConfig,
    ObservedUpdate,
    Reconstruction,
    attack_labels,
    bn_layers,
    chunk,
    copy_model,
    decode_stats,
    observed_stats,
    record_batch_stats,
    run_restarts,
    stats_error,
    total_variation,
    update_distance,
)
from fedshield.engine.metrics import loss_targets
from fedshield.engine.trainer import Algorithm, LocalTrainer
from fedshield.errors import ConfigError

__all__ = ["LocalWork", "invert_unrolled", "simulated_delta"]

_RULES = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)


@dataclass(frozen=True)
class LocalWork:
    """A site's local work as the server knows it from the run's configuration.

    Args:
        trainer: the site's loop (fedshield's own :class:`LocalTrainer`: its optimizer factory
            and loss; a user's ``train_fn`` or another loop cannot be simulated).
        algorithm: ``fedavg``/``fedbn`` (the trainer's optimizer), ``fedprox`` (plus the
            proximal gradient) or ``fedsgd`` (one SGD step of ``sgd_lr``).
        batch_size: the site's loader batch size. The simulation takes each site's images to be
            one batch per step, so a site holding more is refused (``ConfigError``); ``None``:
            the caller vouches that every site's set is one batch.
    """

    trainer: LocalTrainer
    algorithm: Algorithm = field(default_factory=Algorithm)
    batch_size: int | None = None

    def __post_init__(self) -> None:
        check_instance("algorithm", self.algorithm, Algorithm)
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if type(self.trainer) is not LocalTrainer or self.trainer.train_fn is not None:
            raise ConfigError(
                "only fedshield's own LocalTrainer loop (no train_fn) can be simulated, got "
                f"{type(self.trainer).__name__}"
            )

    def check_fits(self, per_site: int) -> None:
        """Refuse ``per_site`` images a site would not train on as one batch per step."""
        if self.batch_size is not None and per_site > self.batch_size:
            raise ConfigError(
                f"a site's {per_site} images span several batches of {self.batch_size}: the "
                "loader's shuffled order is unknown to the server, so its steps cannot be "
                "simulated; attack sites of at most one batch"
            )

    def rules(self, model: nn.Module) -> dict[str, tuple[str, dict]]:
        """Per parameter name of ``model``: the optimizer's kind and its group's options,
        read from the optimizer the trainer's factory builds on ``model``'s parameters."""
        if self.algorithm.name == "fedsgd":
            options = {"lr": self.algorithm.sgd_lr, "momentum": 0.0, "weight_decay": 0.0}
            return {name: ("SGD", options) for name, _ in model.named_parameters()}
        optimizer = self.trainer.optimizer_factory(model.parameters())
        if type(optimizer) not in _RULES:
            raise ConfigError(
                f"cannot simulate {type(optimizer).__name__}; the attack knows "
                f"{', '.join(r.__name__ for r in _RULES)}"
            )
        by_id = {}
        for group in optimizer.param_groups:
            if group.get("amsgrad") or group.get("maximize") or group.get("dampening"):
                raise ConfigError("cannot simulate amsgrad, maximize or dampening")
            options = {k: float(v) if torch.is_tensor(v) else v for k, v in group.items()}
            kind = "SGD" if isinstance(optimizer, torch.optim.SGD) else "Adam"
            if kind == "Adam" and (
                isinstance(optimizer, torch.optim.AdamW) or group.get("decoupled_weight_decay")
            ):
                kind = "AdamW"  # decoupled weight decay (its own class before torch 2.6)
            by_id.update({id(p): (kind, options) for p in group["params"]})
        return {name: by_id[id(p)] for name, p in model.named_parameters()}


def _sqrt(v: torch.Tensor) -> torch.Tensor:
    """``sqrt(v)`` for ``v >= 0`` whose gradient is 0, not infinite, where ``v`` is 0."""
    positive = v > 0
    return torch.where(positive, v, torch.ones_like(v)).sqrt() * positive


def _step(kind: str, o: dict, p, g, state: dict, anchor, mu: float):
    """One optimizer step of one tensor as torch computes it (single-tensor Adam, AdamW,
    SGD), written out so that the new weights stay differentiable."""
    if mu:  # FedProx: grad += mu · (w - w_global), before the optimizer's step
        g = g + mu * (p - anchor)
    t = state["t"] = state.get("t", 0) + 1
    if kind == "SGD":
        g = g + o["weight_decay"] * p if o["weight_decay"] else g
        if o["momentum"]:
            buf = state["buf"] = g if t == 1 else state["buf"] * o["momentum"] + g
            g = g + o["momentum"] * buf if o.get("nesterov") else buf
        return p - o["lr"] * g
    b1, b2 = o["betas"]
    if kind == "AdamW":  # decoupled weight decay
        p = p * (1 - o["lr"] * o["weight_decay"])
    elif o["weight_decay"]:
        g = g + o["weight_decay"] * p
    m = state["m"] = torch.lerp(state.get("m", torch.zeros_like(p)), g, 1 - b1)
    v = state["v"] = state.get("v", torch.zeros_like(p)) * b2 + (1 - b2) * g * g
    denom = _sqrt(v) / math.sqrt(1 - b2**t) + o["eps"]
    return p - (o["lr"] / (1 - b1**t)) * (m / denom)


def _simulate_site(model, work: LocalWork, rules, x, y, steps: int, bn: dict):
    """``steps`` local steps on images ``x`` from the model's weights: the final weights and,
    per BatchNorm layer in ``bn``, its final running mean and variance."""
    start = dict(model.named_parameters())
    params, states = dict(start), {n: {} for n in start}
    running = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in bn.items()}
    mu = work.algorithm.mu if work.algorithm.name == "fedprox" else 0.0
    loss_fn = work.trainer.loss_fn
    for _ in range(steps):
        recorded, handles = record_batch_stats(model, set(bn))
        buffers = {n: b.clone() for n, b in model.named_buffers()}  # BN moves these in place
        try:
            logits = functional_call(model, {**params, **buffers}, (x,))
        finally:
            for h in handles:
                h.remove()
        loss = loss_fn(logits, loss_targets(loss_fn, logits, y))
        names = list(params)
        grads = torch.autograd.grad(
            loss, [params[n] for n in names], create_graph=True, allow_unused=True
        )
        for name, g in zip(names, grads, strict=True):
            if g is not None:  # torch's optimizers skip a tensor without a gradient
                kind, options = rules[name]
                params[name] = _step(kind, options, params[name], g, states[name],
                                     start[name], mu)  # fmt: skip
        for name, module in bn.items():
            (mean, var), (rm, rv) = recorded[name][0], running[name]
            m = module.momentum
            running[name] = ((1 - m) * rm + m * mean, (1 - m) * rv + m * var)
    return params, running


class _Simulator:
    """``observed.local_steps`` steps of ``work`` from ``model`` (holding the broadcast
    weights), its optimizer read and its BatchNorm layers found once."""

    def __init__(self, observed: ObservedUpdate, model: nn.Module, work: LocalWork) -> None:
        self.observed, self.model, self.work = observed, model, work
        self.bn = bn_layers(model, observed.spec)
        for name, module in self.bn.items():
            if module.momentum is None:
                raise ConfigError(f"BatchNorm {name} has momentum None (cumulative): not simulated")
        self.rules = work.rules(model)
        self.names = [n for n, _ in model.named_parameters() if n in observed.spec.names]

    def __call__(self, x: torch.Tensor, y: torch.Tensor, groups: int):
        """The mean over ``groups`` sites (the images split evenly) of each site's simulated
        ``new - old`` per trainable tensor of the spec, and running-statistic deltas."""
        start, steps = dict(self.model.named_parameters()), self.observed.local_steps
        updates, moved = [], []
        for xg, yg in zip(x.chunk(groups), y.chunk(groups), strict=True):
            params, running = _simulate_site(self.model, self.work, self.rules, xg, yg, steps,
                                             self.bn)  # fmt: skip
            updates.append([params[n] - start[n] for n in self.names])
            moved.append({n: (running[n][0] - m.running_mean, running[n][1] - m.running_var)
                          for n, m in self.bn.items()})  # fmt: skip
        update = [torch.stack(parts).mean(0) for parts in zip(*updates, strict=True)]
        stats = {
            n: tuple(torch.stack([d[n][i] for d in moved]).mean(0) for i in (0, 1))
            for n in self.bn
        }  # fmt: skip
        return self.names, update, stats


def simulated_delta(
    observed: ObservedUpdate, work: LocalWork, images: np.ndarray, labels: np.ndarray,
    groups: int = 1,
) -> np.ndarray:  # fmt: skip
    """The update vector (``spec`` layout) that ``observed.local_steps`` steps of ``work`` on
    ``images`` would send from ``observed.start``: what the attack takes a site to do.
    Tensors the simulation does not move (integer buffers) are 0."""
    check_instance("observed", observed, ObservedUpdate)
    check_instance("work", work, LocalWork)
    work.check_fits(len(images) // max(groups, 1))
    model = copy_model(observed, True)
    x, y = torch.as_tensor(images, dtype=torch.float32), torch.as_tensor(labels)
    names, update, stats = _Simulator(observed, model, work)(x, y, groups)
    out = np.zeros(observed.spec.dim, np.float32)
    by_name = {e.name: e for e in observed.spec.entries}
    tensors = dict(zip(names, update, strict=True))
    for layer, (mean, var) in stats.items():
        tensors |= {f"{layer}.running_mean": mean, f"{layer}.running_var": var}
    for name, value in tensors.items():
        e = by_name[name]
        out[e.offset : e.offset + e.size] = value.detach().reshape(-1).numpy()
    return out


def _unrolled_loss(observed, model, work, y, config: InversionConfig):
    """The attack's loss of dummy images ``x``: the cosine of the simulated and observed
    updates, the implied batch statistics' error, total variation."""
    want_stats = observed_stats(observed, model)
    simulate, target = _Simulator(observed, model, work), None
    momenta = {n: m.momentum for n, m in simulate.bn.items()}

    def loss_of(x: torch.Tensor) -> torch.Tensor:
        nonlocal target
        names, update, moved = simulate(x, y, config.groups)
        if target is None:
            target = [chunk(observed.delta, observed.spec, n).reshape(u.shape)
                      for n, u in zip(names, update, strict=True)]  # fmt: skip
        loss = update_distance(update, target, config.layerwise)
        if config.bn_weight:
            got = {}
            for layer, (d_mean, d_var) in moved.items():
                keys = (f"{layer}.running_mean", f"{layer}.running_var")
                start = [chunk(observed.start, observed.spec, k) for k in keys]
                got[layer] = decode_stats(*start, d_mean, d_var, momenta[layer],
                                          observed.local_steps)  # fmt: skip
            loss = loss + config.bn_weight * stats_error(got, want_stats)
        return loss + config.tv_weight * total_variation(x)

    return loss_of


def invert_unrolled(
    observed: ObservedUpdate,
    work: LocalWork,
    *,
    count: int = 1,
    labels: np.ndarray | None = None,
    config: InversionConfig | None = None,
) -> Reconstruction:
    """Reconstruct ``count`` images from a multi-step update by simulating ``work``'s
    ``observed.local_steps`` steps on them (Geiping et al. 2020, Sec. 5).

    Args:
        observed: the update and what the server knows about it.
        work: the sites' local loop and algorithm (public in the run's configuration).
        count: how many images to reconstruct (a multiple of ``config.groups``: each group is
            one site of a secure sum, simulated on its own).
        labels: their labels if the server knows them; ``None`` infers them (iDLG).
        config: the attack's knobs (``bn_mode`` must be ``train``: the loop trains so).

    Raises:
        ConfigError: ``count`` or ``labels`` do not fit, ``bn_mode`` is ``eval``, or the loop
            or its optimizer cannot be simulated.
    """
    config = config or InversionConfig()
    check_instance("work", work, LocalWork)
    if config.bn_mode != "train":
        raise ConfigError("the sites' loop trains in train mode: bn_mode must be train")
    work.check_fits(count // config.groups)
    labels = attack_labels(observed, count, labels, config)
    model = copy_model(observed, True)
    loss_of = _unrolled_loss(observed, model, work, torch.from_numpy(labels), config)
    return run_restarts(loss_of, (count, *observed.image_shape), labels, config)
