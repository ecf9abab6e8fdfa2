"""Classification metrics for any number of classes: accuracy, ROC AUC, sensitivity,
specificity, balanced accuracy, loss.

Binary tasks (two classes, or one logit with ``BCEWithLogitsLoss``) report the AUC of class 1's
score, and the sensitivity and specificity of the 0.5 threshold. With ``K > 2`` classes the
prediction is the arg-max; ``auc`` is the macro one-vs-rest AUC (the mean over the classes
present with both members and non-members in the set), ``sensitivity`` and ``specificity``
their one-vs-rest macro means over the classes present, and ``per_class_sensitivity`` each
class's recall (NaN for a class absent from the set).
``balanced_accuracy`` is the mean recall over the classes present.

Pooling across sites takes no example from any site: :mod:`fedshield.engine.evaluation`.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

__all__ = [
    "binary_metrics",
    "classification_metrics",
    "loss_targets",
    "mean_metrics",
    "predict",
    "probabilities",
    "roc_auc",
    "scalar_metrics",
    "with_failures",
]


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


def _mean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def binary_metrics(labels: np.ndarray, prob_pos: np.ndarray, loss: float = float("nan")) -> dict:
    """Accuracy, AUC, sensitivity (recall of class 1), specificity (recall of class 0), their
    mean (balanced accuracy) and loss, from class 1's probability."""
    labels = np.asarray(labels).astype(np.int64)
    pred = (np.asarray(prob_pos) >= 0.5).astype(np.int64)
    pos, neg = labels == 1, labels == 0
    sensitivity = float(pred[pos].mean()) if pos.any() else float("nan")
    specificity = float((1 - pred[neg]).mean()) if neg.any() else float("nan")
    return {
        "accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
        "auc": roc_auc(labels, prob_pos),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "balanced_accuracy": _mean([sensitivity, specificity]),
        "loss": float(loss),
        "n": len(labels),
    }


def classification_metrics(labels: np.ndarray, probs: np.ndarray, loss: float) -> dict:
    """The metrics of ``probs`` (``(n, K)`` class probabilities) against ``labels``: binary
    metrics for ``K = 2``, one-vs-rest macro means otherwise (see the module docstring)."""
    labels = np.asarray(labels).astype(np.int64)
    if not len(labels):
        return binary_metrics(labels, np.zeros(0), loss)
    probs = np.asarray(probs, dtype=np.float64).reshape(len(labels), -1)
    k = probs.shape[1]
    if k <= 2:
        return binary_metrics(labels, probs[:, -1], loss)
    pred = probs.argmax(axis=1)
    recall, specificity, aucs = [], [], []
    for c in range(k):
        member, other = labels == c, labels != c
        present = bool(member.any())  # an absent class has no recall, AUC or specificity
        recall.append(float((pred[member] == c).mean()) if present else float("nan"))
        specificity.append(
            float((pred[other] != c).mean()) if present and other.any() else float("nan")
        )
        aucs.append(roc_auc(member, probs[:, c]))
    return {
        "accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
        "auc": _mean(aucs),
        "sensitivity": _mean(recall),
        "specificity": _mean(specificity),
        "balanced_accuracy": _mean(recall),
        "per_class_sensitivity": recall,
        "loss": float(loss),
        "n": len(labels),
    }


def loss_targets(loss_fn: nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``labels`` as ``loss_fn`` takes them: class indices, or for ``BCEWithLogitsLoss`` (one
    logit per example) float targets of the logits' shape."""
    if isinstance(loss_fn, nn.BCEWithLogitsLoss):
        if logits.numel() != labels.numel():
            raise ValueError(
                f"BCEWithLogitsLoss needs one logit per example, got logits of shape "
                f"{tuple(logits.shape)}: give the model one output, or use CrossEntropyLoss"
            )
        return labels.to(logits.dtype).reshape(logits.shape)
    return labels


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``(n, K)``: a softmax, or for one logit per example its sigmoid as
    class 1 beside its complement (``(n, 2)``)."""
    if logits.ndim == 1 or logits.shape[1] == 1:
        positive = torch.sigmoid(logits.reshape(-1))
        return torch.stack([1 - positive, positive], dim=1)
    return torch.softmax(logits, dim=1)


@torch.no_grad()
def predict(model: nn.Module, loader, loss_fn: nn.Module | None = None):
    """``(labels, class probabilities (n, K), mean loss)`` of ``model`` over ``loader``."""
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    model.eval()
    labels, probs, total, count = [], [], 0.0, 0
    for x, y in loader:
        logits = model(x)
        total += float(loss_fn(logits, loss_targets(loss_fn, logits, y))) * len(y)
        count += len(y)
        probs.append(probabilities(logits).numpy())
        labels.append(y.numpy())
    if not count:
        return np.zeros(0, np.int64), np.zeros((0, 2), np.float32), float("nan")
    return np.concatenate(labels), np.concatenate(probs), total / count


def with_failures(
    pooled: dict, per_site: dict[str, dict], failed: dict[str, str]
) -> tuple[dict, dict[str, dict]]:  # fmt: skip
    """``(pooled, per_site)`` with each site whose evaluation failed listed under its name:
    its metrics NaN and ``error`` the reason (a warning names it too)."""
    for name, error in failed.items():
        warnings.warn(f"site {name}: evaluation failed ({error}); pooled without it", stacklevel=3)
        per_site[name] = {**binary_metrics(np.zeros(0), np.zeros(0)), "error": error}
    return pooled, per_site


def mean_metrics(per_site: dict[str, dict]) -> dict:
    """Pooled metrics where only each site's own are known (``ClientAlgo`` sites): each
    numeric metric's mean over the sites, weighted by ``n`` where every site gives it, with
    ``pooled: "site mean"`` saying so."""
    names = {k for m in per_site.values() for k, v in m.items() if isinstance(v, int | float)}
    counts = [m.get("n") for m in per_site.values()]
    weighted = all(isinstance(c, int | float) and c > 0 for c in counts)
    pooled: dict = {"pooled": "site mean" if weighted else "unweighted site mean"}
    for k in sorted(names - {"n"}):
        values = [(float(m[k]), float(m["n"]) if weighted else 1.0) for m in per_site.values()
                  if isinstance(m.get(k), int | float) and np.isfinite(m[k])]  # fmt: skip
        total = sum(w for _, w in values)
        pooled[k] = sum(v * w for v, w in values) / total if total else float("nan")
    if weighted:
        pooled["n"] = int(sum(counts))
    for k in ("accuracy", "auc", "loss", "sensitivity", "specificity"):
        pooled.setdefault(k, float("nan"))
    return pooled


def scalar_metrics(metrics: dict, site: str) -> dict:
    """The numeric scalars of a site's own ``metrics`` (a ``ClientAlgo``'s, an
    ``evaluate_fn``'s) as floats (integers as ints); anything else (a per-class tensor, say)
    is left out, with a warning naming it."""
    kept, dropped = {}, []
    for key, value in dict(metrics).items():
        if isinstance(value, int | np.integer) and not isinstance(value, bool):
            kept[str(key)] = int(value)  # a count stays a count
            continue
        try:
            kept[str(key)] = float(value)  # Python and numpy scalars, one-element tensors
        except (TypeError, ValueError, RuntimeError):
            dropped.append(str(key))
    if dropped:
        warnings.warn(f"site {site}: metrics {dropped} are not scalars; left out", stacklevel=2)
    return kept
