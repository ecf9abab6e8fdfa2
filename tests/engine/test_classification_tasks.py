"""Classification beyond two softmax outputs: K-class metrics against an independent one-vs-rest
AUC, a one-logit BCE model that trains and evaluates under secure aggregation, a site whose
evaluation fails (reported by name, the round's record kept), and a 4-class synthetic task."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from torch import nn

from fedshield.cli import main
from fedshield.data import make_synthetic_sites
from fedshield.data.sites import SiteData
from fedshield.engine import Federation, make_site
from fedshield.engine.evaluation import SiteEvaluation, pool_evaluations
from fedshield.engine.metrics import classification_metrics
from fedshield.engine.models import SmallCNN
from fedshield.engine.trainer import LocalTrainer


def _pairwise_auc(member: np.ndarray, scores: np.ndarray) -> float:
    """The AUC by its definition: over every (member, non-member) pair, 1 when the member
    scores higher, 1/2 on a tie."""
    pos, neg = scores[member], scores[~member]
    wins = [(p > q) + 0.5 * (p == q) for p, q in itertools.product(pos, neg)]
    return float(np.mean(wins))


def test_k_class_metrics_match_an_independent_one_vs_rest_computation():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4)) + 1.5 * np.eye(4)[labels]
    logits[:20] = np.round(logits[:20])  # some ties
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    m = classification_metrics(labels, probs, loss=0.7)
    expected_auc = np.mean([_pairwise_auc(labels == k, probs[:, k]) for k in range(4)])
    assert m["auc"] == pytest.approx(expected_auc, abs=1e-12)
    pred = probs.argmax(axis=1)
    recall = [float((pred[labels == k] == k).mean()) for k in range(4)]
    assert m["per_class_sensitivity"] == pytest.approx(recall)
    assert m["balanced_accuracy"] == pytest.approx(np.mean(recall))
    assert m["accuracy"] == pytest.approx((pred == labels).mean())
    assert m["n"] == 300 and m["loss"] == 0.7


def test_binary_metrics_are_unchanged_from_two_columns_or_one():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 50)
    p1 = rng.random(50)
    two = classification_metrics(labels, np.stack([1 - p1, p1], axis=1), 0.1)
    one = classification_metrics(labels, p1, 0.1)
    assert two == one and two["auc"] == pytest.approx(_pairwise_auc(labels == 1, p1))
    assert two["balanced_accuracy"] == pytest.approx((two["sensitivity"] + two["specificity"]) / 2)


def test_a_class_absent_from_the_test_set_is_left_out_of_the_macro_means():
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(4)[[0, 0, 1, 1, 2, 3]] * 0.9 + 0.025
    m = classification_metrics(labels, probs, 0.0)
    assert np.isnan(m["per_class_sensitivity"][3]) and m["balanced_accuracy"] == pytest.approx(
        (1 + 1 + 0.5) / 3
    )


class _OneLogit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = SmallCNN(1, num_classes=1, width=4)

    def forward(self, x):
        return self.body(x)  # (n, 1): one logit for class 1


def test_a_one_logit_bce_model_trains_and_evaluates_under_secagg(tiny_sites):
    fed = Federation(
        model_factory=_OneLogit, protect="secagg",
        trainer=LocalTrainer(loss_fn=nn.BCEWithLogitsLoss()),
        sites=[make_site(s, batch_size=8, seed=i) for i, s in enumerate(tiny_sites)],
    )  # fmt: skip
    records = [fed.run_round() for _ in range(2)]
    for record in records:
        assert record.aborted is None and 0 <= record.metrics["auc"] <= 1
        assert np.isfinite(record.metrics["loss"]) and record.per_site["site0"]["n"] == 8


class _FailsAtSiteOne(nn.Module):
    """A user's model whose evaluation breaks on one site's test images (a batch size it
    cannot take, say): training is fine."""

    def __init__(self) -> None:
        super().__init__()
        self.net = SmallCNN(1, width=4)

    def forward(self, x):
        if not self.training and x.shape[0] == 7:
            raise RuntimeError("this model cannot evaluate a batch of 7")
        return self.net(x)


def test_a_failed_evaluation_names_the_site_and_the_record_is_kept():
    rng = np.random.default_rng(2)

    def site(name, n_test):
        x = rng.normal(size=(16 + n_test, 1, 8, 8)).astype(np.float32)
        y = rng.integers(0, 2, 16 + n_test)
        return SiteData(name, x[:16], y[:16], x[16:], y[16:])

    fed = Federation(
        model_factory=_FailsAtSiteOne, protect="plain",
        sites=[make_site(site("a", 8), batch_size=8), make_site(site("b", 7), batch_size=8)],
    )  # fmt: skip
    with pytest.warns(UserWarning, match="site b: evaluation failed"):
        record = fed.run_round()
    assert record.aborted is None and fed.round == 2
    assert "cannot evaluate a batch of 7" in record.per_site["b"]["error"]
    assert np.isnan(record.per_site["b"]["auc"]) and "error" not in record.per_site["a"]
    assert record.metrics["n"] == 8  # pooled from site a alone
    row = record.as_dict()
    assert json.loads(json.dumps(row, default=str))["per_site"]["b"]["error"]


def test_four_class_synthetic_sites_and_a_run_that_reports_macro_metrics(tmp_path):
    sites = make_synthetic_sites(2, train_per_site=40, test_per_site=40, classes=4)
    assert set(np.concatenate([s.train_y for s in sites]).tolist()) == {0, 1, 2, 3}
    assert main(["run", "--classes", "4", "--rounds", "1", "--sites", "2",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    (row,) = json.loads((tmp_path / "result.json").read_text())["rounds"]
    assert len(row["per_site"]["site0"]["per_class_sensitivity"]) == 4
    assert 0 <= row["auc"] <= 1 and 0 <= row["balanced_accuracy"] <= 1


def test_pooled_metrics_take_k_columns_from_every_site():
    """The sites' summed summaries give the pooled set's metrics: exactly, but for the AUC,
    which the histograms bin (within their own error bound)."""
    rng = np.random.default_rng(3)
    parts = []
    for _name in ("a", "b"):
        y = rng.integers(0, 3, 20)
        p = torch.softmax(torch.tensor(rng.normal(size=(20, 3))), dim=1).numpy()
        parts.append((y, p))
    evaluations = {
        name: SiteEvaluation.of(y, p, 1.0) for name, (y, p) in zip("ab", parts, strict=True)
    }
    pooled, per_site = pool_evaluations(evaluations)
    assert pooled["n"] == 40 and set(per_site) == {"a", "b"}
    both = classification_metrics(
        np.concatenate([parts[0][0], parts[1][0]]), np.concatenate([parts[0][1], parts[1][1]]), 1
    )
    assert {k: pooled[k] for k in both if k != "auc"} == {k: v for k, v in both.items()
                                                          if k != "auc"}  # fmt: skip
    assert abs(pooled["auc"] - both["auc"]) <= pooled["auc_bin_error_max"] <= 0.005


def test_a_users_evaluation_function_replaces_ours(tiny_sites):
    def brier(model, loader):
        model.eval()
        with torch.no_grad():
            errors = [((torch.softmax(model(x), 1)[:, 1] - y) ** 2).sum() for x, y in loader]
        return {"brier": float(sum(errors)) / len(loader.dataset), "n": len(loader.dataset)}

    fed = Federation(
        model_factory=lambda: SmallCNN(1, width=4), protect="plain",
        trainer=LocalTrainer(evaluate_fn=brier),
        sites=[make_site(s, batch_size=8, seed=i) for i, s in enumerate(tiny_sites)],
    )  # fmt: skip
    record = fed.run_round()
    assert set(record.per_site["site0"]) == {"brier", "n"}
    sizes = [record.per_site[f"site{i}"]["n"] for i in range(3)]
    expected = sum(record.per_site[f"site{i}"]["brier"] * sizes[i] for i in range(3)) / sum(sizes)
    assert record.metrics["brier"] == pytest.approx(expected)
    assert record.metrics["pooled"] == "site mean"
    row = record.as_dict()  # result.json's round row carries the user's metric and its kind
    assert row["brier"] == record.metrics["brier"] and row["pooled"] == "site mean"
