"""Federated segmentation: MONAI's Dice + cross-entropy loss to train, its Dice metric to test.

A site's targets are masks ``(N, 1, H, W)`` of class indices (0 background, 1 lesion); the
network (``unet``: MONAI's 2D ``UNet``) gives ``(N, 2, H, W)`` logits. The loss is MONAI's
``DiceCELoss(to_onehot_y=True, softmax=True)``. A site's evaluation (the trainer's
``evaluate_fn``) is MONAI's ``DiceMetric(include_background=False)`` of the arg-max
prediction, per image: the federation pools the sites' means weighted by their number of
images (:func:`~fedshield.engine.metrics.mean_metrics`), which is the mean over every test
image of every site. An image without lesion counts (``ignore_empty=False``): 1 when the
prediction is empty too, 0 for any false positive.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedshield.data.synthetic import TASKS
from fedshield.engine.trainer import LocalTrainer
from fedshield.errors import ConfigError

if TYPE_CHECKING:
    from fedshield.engine.experiment import RunConfig

__all__ = [
    "SEGMENTATION_LR",
    "SEGMENTATION_MODELS",
    "TASKS",
    "check_task",
    "dice_metrics",
    "segmentation_loss",
    "segmentation_trainer",
]

SEGMENTATION_MODELS = ("unet",)  # networks that map an image to per-pixel logits
# The default local Adam rate of segmentation: 1e-3 (classification's) left the UNet short of
# Dice 0.70 after 5 rounds (0.64 with 8/16/32 channels, 0.72 with 16/32/64 but 0.70 at round
# 4, still climbing); 3e-3 gets 0.72-0.74 on seeds 0-3, and 1e-2 no more.
SEGMENTATION_LR = 3e-3


def segmentation_loss() -> nn.Module:
    """MONAI's ``DiceCELoss`` on softmax probabilities, masks one-hot encoded (the default
    weights: Dice and cross-entropy, 1 each)."""
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True)


@torch.no_grad()
def dice_metrics(model: nn.Module, loader, loss_fn: nn.Module | None = None) -> dict[str, float]:
    """``{"dice", "loss", "n"}`` of ``model`` over ``loader``'s ``(images, masks)``: the
    mean per-image Dice of the foreground classes (MONAI ``DiceMetric``), the mean loss and
    the number of images."""
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    loss_fn = loss_fn or segmentation_loss()
    metric = DiceMetric(include_background=False, reduction="mean", ignore_empty=False)
    model.eval()
    total, count = 0.0, 0
    for x, y in loader:
        logits = model(x)
        if logits.ndim != 4 or logits.shape[2:] != y.shape[2:]:
            raise ConfigError(
                f"a segmentation model must give (N, classes, H, W) logits for masks "
                f"{tuple(y.shape)}, got {tuple(logits.shape)}: use --model unet"
            )
        total += float(loss_fn(logits, y)) * len(y)
        count += len(y)
        classes = logits.shape[1]
        metric(one_hot(logits.argmax(dim=1, keepdim=True), classes), one_hot(y, classes))
    if not count:
        return {"dice": float("nan"), "loss": float("nan"), "n": 0}
    return {"dice": float(metric.aggregate()), "loss": total / count, "n": count}


def segmentation_trainer(
    optimizer_factory: Callable[..., torch.optim.Optimizer],
) -> LocalTrainer:
    """fedshield's loop with :func:`segmentation_loss`, each site evaluated by
    :func:`dice_metrics` with the same loss."""
    loss = segmentation_loss()
    return LocalTrainer(
        loss_fn=loss,
        optimizer_factory=optimizer_factory,
        evaluate_fn=partial(dice_metrics, loss_fn=loss),
    )


def check_task(config: RunConfig) -> None:
    """Refuse, naming the option, what ``--task`` cannot combine with: a classification
    network for masks (or the reverse), class grades, DP-SGD and Flower for segmentation."""
    if config.task not in TASKS:
        raise ConfigError(f"--task must be one of {', '.join(TASKS)}, got {config.task!r}")
    segmenter = config.model in SEGMENTATION_MODELS
    if config.task == "classification":
        if segmenter:
            raise ConfigError(
                f"--model {config.model} segments images; use it with --task segmentation"
            )
        return
    if not segmenter:
        raise ConfigError(
            f"--task segmentation needs a segmentation network (--model "
            f"{' or '.join(SEGMENTATION_MODELS)}); {config.model} classifies whole images"
        )
    if config.classes not in (None, 2):
        raise ConfigError(
            "--classes shapes the classification task; segmentation masks are binary "
            "(background and lesion): drop --classes"
        )
    if config.dp_sgd:
        raise ConfigError(
            "--dp-sgd's trainer takes the classification loss and evaluation only (not wired "
            "for segmentation); use site-level DP (--dp-mode) or drop --dp-sgd"
        )
    if config.transport == "flower":
        raise ConfigError(
            "--task segmentation runs in process only: the Flower sites send labels and class "
            "probabilities for evaluation, not per-site Dice; use --transport inprocess"
        )
