"""Evaluation's edge cases, each first found failing by a review: an empty test set, BCELoss,
a site whose AUC is undefined, a user's metric in result.json, evaluate_fn in eval mode,
--classes against a file's labels and in a site process, macro specificity under label
skew."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedshield.engine import Federation, make_site
from fedshield.engine.evaluation import SiteEvaluation, pool_evaluations
from fedshield.engine.experiment import (
    RunConfig,
    build_federation,
    build_site_runtime,
    with_data_facts,
)
from fedshield.engine.metrics import mean_metrics, predict
from fedshield.engine.models import SmallCNN
from fedshield.engine.site import Site
from fedshield.engine.trainer import LocalTrainer
from fedshield.errors import ConfigError


def test_pooled_metrics_survive_a_site_with_an_empty_test_set():
    """predict() returns (0, 2) probabilities for an empty loader; the old pooling's reshape
    (len(y), -1) of a size-0 array raised, after the aggregate was applied (record lost).
    Now that site's summary (of two classes, n = 0) meets a three-class site's: it adds
    nothing and its empty metrics are its own."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 10)
    p = rng.dirichlet(np.ones(3), 10)
    empty = SiteEvaluation.of(np.zeros(0, np.int64), np.zeros((0, 2)), float("nan"))
    pooled, per_site = pool_evaluations({"a": empty, "b": SiteEvaluation.of(y, p, 1.0)})
    assert pooled["n"] == 10 and len(pooled["per_class_sensitivity"]) == 3
    assert per_site["a"]["n"] == 0 and per_site["b"]["n"] == 10


def test_a_user_site_with_an_empty_test_loader_keeps_the_round(tiny_sites):
    sites = [make_site(s, batch_size=8, seed=i) for i, s in enumerate(tiny_sites)]
    empty = DataLoader(TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)))
    sites[0] = Site(sites[0].name, train=sites[0].train, test=empty, weight=sites[0].weight)
    fed = Federation(model_factory=lambda: SmallCNN(1, width=4), sites=sites)
    fed.run_round()  # ValueError: cannot reshape array of size 0 into shape (0,newaxis)
    assert fed.round == 2


def test_bce_loss_is_refused_for_its_probabilities_would_be_sigmoided_again():
    """BCELoss takes probabilities; evaluation reads logits (it would apply a second sigmoid
    and call every example positive): refused, naming the loss to use."""
    with pytest.raises(ConfigError, match="BCEWithLogitsLoss"):
        LocalTrainer(loss_fn=nn.BCELoss())


def test_two_logits_with_bce_say_what_to_change(tiny_sites):
    site = make_site(tiny_sites[0], batch_size=8)
    with pytest.raises(ValueError, match="one output, or use CrossEntropyLoss"):
        predict(SmallCNN(1, width=4), site.test, nn.BCEWithLogitsLoss())


def test_a_site_mean_skips_a_site_whose_auc_is_undefined():
    """classification_metrics' macro means skip NaN; mean_metrics does not: one site whose
    test set holds one class makes the pooled (site-mean) AUC NaN."""
    pooled = mean_metrics({"a": {"auc": 0.8, "n": 10.0}, "b": {"auc": float("nan"), "n": 5.0}})
    assert pooled["auc"] == pytest.approx(0.8)


def test_evaluate_fn_sees_the_model_in_eval_mode(tiny_sites):
    modes = []

    def spy(model, loader):
        modes.append(model.training)
        return {"n": len(loader.dataset)}

    fed = Federation(
        model_factory=lambda: SmallCNN(1, width=4),
        trainer=LocalTrainer(evaluate_fn=spy),
        sites=[make_site(s, batch_size=8, seed=i) for i, s in enumerate(tiny_sites)],
    )
    fed.run_round()
    assert modes == [False, False, False]  # today: [True, True, True] (BatchNorm in train mode)


def _npz(tmp_path, train_labels, test_labels):
    rng = np.random.default_rng(0)
    path = tmp_path / "three.npz"
    arrays = {}
    for split, labels in (("train", train_labels), ("val", test_labels), ("test", test_labels)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (len(labels), 8, 8), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.asarray(labels, np.int64)[:, None]
    np.savez(path, **arrays)
    return path


def test_classes_given_for_a_medmnist_file_is_checked_against_its_labels(tmp_path):
    """load_sites refuses --classes for a file, but _load never passes it: --classes 5 on a
    binary file silently builds a 5-output model."""
    path = _npz(tmp_path, [0, 1] * 20, [0, 1] * 10)
    with pytest.raises(ConfigError, match="labels run from 0 to 1: its task has 2 classes"):
        build_federation(RunConfig(dataset=f"medmnist:{path}", sites=2, classes=5))
    assert build_federation(RunConfig(dataset=f"medmnist:{path}", sites=2, classes=2))


def test_a_site_process_does_not_infer_fewer_classes_from_its_own_labels(tmp_path):
    """A site process's own shard may lack a class: without ``classes`` in its config it is
    refused (it once inferred 2 where the server had 3); the launcher's facts give all 3."""
    path = _npz(tmp_path, [0, 1] * 20 + [2, 2], [0, 1] * 9)  # class 2: two training images
    config = RunConfig(dataset=f"medmnist:{path}", sites=4, max_weight=12.0)
    with pytest.raises(ConfigError, match="need classes"):
        build_site_runtime(config, 0)
    config = with_data_facts(config)
    assert config.classes == 3
    outputs = set()
    for s in range(4):
        model = build_site_runtime(config, s).model
        outputs.add([m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features)
    assert outputs == {3}


def test_macro_specificity_leaves_out_classes_absent_from_the_set_like_the_other_means():
    """A class absent from a site's test set (label skew) has no recall and no AUC, so it is
    left out of those means; its 'specificity' (not predicted as it) is ~1 and inflates the
    macro specificity."""
    from fedshield.engine.metrics import classification_metrics

    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.4, 0.6, 0, 0], [0.6, 0.4, 0, 0], [0.6, 0.4, 0, 0], [0.4, 0.6, 0, 0]])
    m = classification_metrics(labels, probs, 0.0)  # chance between the two present classes
    assert m["sensitivity"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx(0.5)  # today 0.75: classes 2 and 3 count 1.0
