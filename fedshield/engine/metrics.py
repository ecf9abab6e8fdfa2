"""Binary classification metrics: accuracy, ROC AUC, sensitivity, specificity, loss."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["binary_metrics", "pooled_metrics", "predict", "roc_auc"]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count one half).

    Returns NaN when only one class is present.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average ranks (1-based) over runs of tied scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(scores)]))
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def binary_metrics(labels: np.ndarray, prob_pos: np.ndarray, loss: float = float("nan")) -> dict:
    """Accuracy, AUC, sensitivity (recall of class 1), specificity (recall of class 0), loss."""
    labels = np.asarray(labels).astype(np.int64)
    pred = (np.asarray(prob_pos) >= 0.5).astype(np.int64)
    pos, neg = labels == 1, labels == 0
    return {
        "accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
        "auc": roc_auc(labels, prob_pos),
        "sensitivity": float(pred[pos].mean()) if pos.any() else float("nan"),
        "specificity": float((1 - pred[neg]).mean()) if neg.any() else float("nan"),
        "loss": float(loss),
        "n": len(labels),
    }


@torch.no_grad()
def predict(model: nn.Module, loader, loss_fn: nn.Module | None = None):
    """Return ``(labels, probability of class 1, mean loss)`` of ``model`` over ``loader``."""
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    model.eval()
    labels, probs, total, count = [], [], 0.0, 0
    for x, y in loader:
        logits = model(x)
        total += float(loss_fn(logits, y)) * len(y)
        count += len(y)
        probs.append(torch.softmax(logits, dim=1)[:, 1].numpy())
        labels.append(y.numpy())
    if not count:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), float("nan")
    return np.concatenate(labels), np.concatenate(probs), total / count


def pooled_metrics(
    results: list[tuple[str, np.ndarray, np.ndarray, float]],
) -> tuple[dict, dict[str, dict]]:
    """Pooled and per-site metrics from each site's ``(name, labels, probabilities, loss)``."""
    if not results:
        return binary_metrics(np.zeros(0), np.zeros(0)), {}
    per_site = {name: binary_metrics(y, p, loss) for name, y, p, loss in results}
    labels = np.concatenate([y for _, y, _, _ in results])
    probs = np.concatenate([p for _, _, p, _ in results])
    loss = sum(loss * len(y) for _, y, _, loss in results) / max(1, len(labels))
    return binary_metrics(labels, probs, loss), per_site
