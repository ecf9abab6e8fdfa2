"""Membership inference on a trained model: was this patient's image in the training data?

- **Loss threshold** (Yeom et al., "Privacy Risk in Machine Learning: Analyzing the Connection
  to Overfitting", CSF 2018, Sec. 3.2): a model's loss is lower on the examples it trained on;
  the attack's score is ``-loss(x)``.
- **Calibrated** (Watson et al., "On the Importance of Difficulty Calibration in Membership
  Inference Attacks", ICLR 2022, Sec. 3): ``loss_ref(x) - loss(x)``, where a reference model
  trained the same way on other data of the same population says how hard ``x`` is anyway.

Each is summarised by its ROC AUC over members against held-out non-members (0.5: chance).
Secure aggregation hides the updates but not the final model, so it leaves this leak as it is;
differential privacy bounds it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from fedshield._validate import check_instance, check_int
from fedshield.engine.metrics import roc_auc
from fedshield.engine.trainer import LocalTrainer
from fedshield.errors import ConfigError

__all__ = ["attack_aucs", "per_example_loss", "train_reference"]


def per_example_loss(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of ``model`` (in eval mode) on each image, float64 ``(N,)``."""
    check_instance("model", model, nn.Module)
    images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int64)
    if images.ndim != 4 or labels.shape != (len(images),):
        raise ConfigError(
            f"images (N, C, H, W) need labels (N,), got {images.shape}, {labels.shape}"
        )
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            x = torch.from_numpy(images[start : start + 256])
            y = torch.from_numpy(labels[start : start + 256])
            out.append(F.cross_entropy(model(x), y, reduction="none").double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def attack_aucs(
    member_loss: np.ndarray, nonmember_loss: np.ndarray,
    member_ref: np.ndarray | None = None, nonmember_ref: np.ndarray | None = None,
) -> dict[str, float]:  # fmt: skip
    """The attacks' AUCs: ``loss_threshold`` (Yeom et al.) and, given a reference model's
    losses on the same examples, ``calibrated`` (Watson et al.).

    Raises:
        ConfigError: an empty side, a length mismatch or a non-finite loss.
    """
    member_loss, nonmember_loss = np.asarray(member_loss), np.asarray(nonmember_loss)
    if not len(member_loss) or not len(nonmember_loss):
        raise ConfigError("membership inference needs members and non-members")
    labels = np.r_[np.ones(len(member_loss)), np.zeros(len(nonmember_loss))]
    losses = np.r_[member_loss, nonmember_loss]
    if not np.isfinite(losses).all():
        raise ConfigError("a loss is NaN or infinite")
    result = {"loss_threshold": roc_auc(labels, -losses)}
    if member_ref is not None and nonmember_ref is not None:
        ref = np.r_[np.asarray(member_ref), np.asarray(nonmember_ref)]
        if ref.shape != losses.shape or not np.isfinite(ref).all():
            raise ConfigError("reference losses must be finite, one per example")
        result["calibrated"] = roc_auc(labels, ref - losses)
    return result


def train_reference(
    model: nn.Module, images: np.ndarray, labels: np.ndarray, *, epochs: int,
    batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
) -> nn.Module:  # fmt: skip
    """Train ``model`` in place on the attacker's own population data (no member among it)
    with the engine's local loop (Adam), as the target was trained: the calibration's
    reference."""
    check_int("epochs", epochs, low=1, error=ConfigError)
    data = TensorDataset(torch.from_numpy(np.asarray(images, np.float32)),
                         torch.from_numpy(np.asarray(labels, np.int64)))  # fmt: skip
    loader = DataLoader(data, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
    trainer = LocalTrainer(optimizer_factory=lambda p: torch.optim.Adam(p, lr=lr))
    trainer.fit(model, loader, epochs)
    return model
