"""The ClientAlgo adapter's edge cases, each first found failing by a review: an algorithm that
adopts the tensors it is given, a wrong-shaped diff, a non-scalar metric, one trainer for every
site, a trainer named for another site, ClientAlgo sites beside built-in ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.fl.client import ClientAlgo
from monai.fl.utils.constants import WeightType
from monai.fl.utils.exchange_object import ExchangeObject

from fedshield.data import make_synthetic_sites
from fedshield.engine import Federation, make_site
from fedshield.engine.client_algo import ClientAlgoTrainer
from fedshield.engine.metrics import classification_metrics, predict
from fedshield.engine.models import SmallCNN
from fedshield.engine.site import Site

DATA = make_synthetic_sites(2, train_per_site=32, test_per_site=16)


def _model():
    return SmallCNN(1, width=4)


class _Algo(ClientAlgo):
    def __init__(self, data, diff=True, assign=False, metrics=None, bad_shape=False):
        self.data, self.diff, self.assign = data, diff, assign
        self.extra_metrics, self.bad_shape = metrics or {}, bad_shape

    def initialize(self, extra=None):
        self.model, self.loss = _model(), torch.nn.CrossEntropyLoss()
        site = make_site(self.data, batch_size=16, seed=0)
        self.loader, self.test = site.train, site.test

    def train(self, data, extra=None):
        self.start = {k: v.clone() for k, v in data.weights.items()}
        self.model.load_state_dict(data.weights, assign=self.assign)
        opt = torch.optim.SGD(self.model.parameters(), lr=0.5)
        self.model.train()
        for x, y in self.loader:
            opt.zero_grad()
            self.loss(self.model(x), y).backward()
            opt.step()

    def get_weights(self, extra=None):
        state = self.model.state_dict()
        if not self.diff:
            return ExchangeObject(weights=state, weight_type=WeightType.WEIGHTS)
        diff = {k: v - self.start[k] for k, v in state.items()}
        if self.bad_shape:
            key = next(k for k in diff if k.endswith("weight") and diff[k].ndim > 1)
            diff[key] = diff[key].mean().reshape(1)  # a bug in the user's algo
        return ExchangeObject(weights=diff, weight_type=WeightType.WEIGHT_DIFF)

    def evaluate(self, data, extra=None):
        self.model.load_state_dict(data.weights)
        m = classification_metrics(*predict(self.model, self.test, self.loss))
        return ExchangeObject(metrics={"auc": m["auc"], "n": m["n"], **self.extra_metrics})


def _fed(algos, protect="plain", trainer=None):
    return Federation(
        model_factory=_model, protect=protect, seed=0,
        sites=[Site(d.name, train=None, test=None, weight=float(d.n_train)) for d in DATA],
        trainer=trainer
        or [ClientAlgoTrainer(a, name=d.name) for a, d in zip(algos, DATA, strict=True)],
    )  # fmt: skip


def test_weight_diffs_do_not_depend_on_the_algo_leaving_our_start_weights_alone():
    """The dict handed to train() is the one the diff is added back to: an algo that adopts
    the tensors (load_state_dict(assign=True), or trains them in place) counts its update
    twice."""
    full, diff = (
        _fed([_Algo(d, diff=False) for d in DATA]),
        _fed([_Algo(d, assign=True) for d in DATA]),
    )
    full.run_round(), diff.run_round()
    np.testing.assert_allclose(diff.global_vector, full.global_vector, atol=1e-5)


def test_a_weight_diff_of_the_wrong_shape_is_refused_not_broadcast():
    fed = _fed([_Algo(d, bad_shape=True) for d in DATA])
    with pytest.raises(Exception, match="shape"):
        fed.run_round()  # today: start + diff broadcasts the (1,) diff over the whole tensor


def test_a_non_scalar_metric_is_left_out_not_the_whole_site():
    """MonaiAlgo returns the ignite evaluator's state.metrics as they are: per-class tensors,
    say. float(v) raises, and the site's whole evaluation is reported failed."""
    per_class = {"per_class_dice": torch.tensor([0.5, 0.7])}
    fed = _fed([_Algo(d, metrics=per_class) for d in DATA])
    record = fed.run_round()
    assert "error" not in record.per_site["site0"] and np.isfinite(record.metrics["auc"])


def test_one_clientalgo_trainer_is_not_shared_by_every_site():
    """A single ClientAlgoTrainer is accepted for all sites: one algo's data trained N times
    under N names (and initialize ran with one site's name)."""
    one = ClientAlgoTrainer(_Algo(DATA[0]), name="site0")
    with pytest.raises((TypeError, ValueError)):
        _fed(None, trainer=one)


def test_a_trainer_named_for_another_site_is_refused():
    trainers = [ClientAlgoTrainer(_Algo(d), name="site0") for d in DATA]  # both "site0"
    with pytest.raises((TypeError, ValueError)):
        _fed(None, trainer=trainers)


def test_clientalgo_sites_beside_builtin_sites_are_pooled_not_dropped():
    algo_site = Site(DATA[0].name, train=None, test=None, weight=float(DATA[0].n_train))
    fed = Federation(
        model_factory=_model, seed=0, sites=[algo_site, make_site(DATA[1], batch_size=16)],
        trainer=[ClientAlgoTrainer(_Algo(DATA[0]), name="site0"), None],
    )  # fmt: skip
    record = fed.run_round()
    # today: pooled n == 16, site1's alone; site0's metrics are only in per_site
    both = len(DATA[0].test_y) + len(DATA[1].test_y)
    assert record.metrics["n"] == both or "pooled" in record.metrics
