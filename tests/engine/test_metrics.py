import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield.engine.metrics import binary_metrics, roc_auc


def _brute_force_auc(labels, scores):
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 5)), min_size=2, max_size=30))
def test_auc_matches_pair_counting_with_ties(pairs):
    labels = np.array([p[0] for p in pairs])
    scores = np.array([p[1] for p in pairs], dtype=float)
    if labels.min() == labels.max():
        assert np.isnan(roc_auc(labels, scores))
    else:
        assert roc_auc(labels, scores) == _brute_force_auc(labels, scores)


def test_sensitivity_specificity_accuracy():
    labels = np.array([1, 1, 1, 0, 0])
    probs = np.array([0.9, 0.6, 0.2, 0.1, 0.7])
    m = binary_metrics(labels, probs, loss=0.5)
    assert m["accuracy"] == 3 / 5
    assert m["sensitivity"] == 2 / 3
    assert m["specificity"] == 1 / 2
    assert m["auc"] == 4 / 6  # 4 of the 6 (positive, negative) pairs ordered right
    assert m["loss"] == 0.5
