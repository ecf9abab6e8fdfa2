"""A MONAI ClientAlgo as each site's trainer: the same aggregate as the built-in trainer bit for
bit (full weights; weight differences to float precision), under secagg and he too, its own
metrics per site, and its lifecycle (initialize, abort on a failed round, finalize)."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.fl.client import ClientAlgo
from monai.fl.utils.constants import ExtraItems, WeightType
from monai.fl.utils.exchange_object import ExchangeObject

from fedshield.data import make_synthetic_sites
from fedshield.engine import Federation, make_site
from fedshield.engine.client_algo import ClientAlgoTrainer
from fedshield.engine.metrics import classification_metrics, predict
from fedshield.engine.models import SmallCNN
from fedshield.engine.site import Site
from fedshield.errors import WrongShape

ROOT = Path(__file__).resolve().parents[2]


def _model():
    return SmallCNN(1, width=4)


class _LoopAlgo(ClientAlgo):
    """A user's ClientAlgo doing what the built-in trainer does (Adam 1e-3, cross-entropy,
    one epoch over the same seeded loader), in its own model and loop."""

    def __init__(self, data, *, seed: int, diff: bool = False, fail: bool = False) -> None:
        self.data, self.seed, self.diff, self.fail = data, seed, diff, fail
        self.calls: list[str] = []

    def initialize(self, extra=None):
        self.calls.append(f"initialize {extra[ExtraItems.CLIENT_NAME]}")
        self.model, self.loss = _model(), torch.nn.CrossEntropyLoss()
        site = make_site(self.data, batch_size=16, seed=self.seed)
        self.loader, self.test = site.train, site.test

    def train(self, data, extra=None):
        self.calls.append("train")
        if self.fail:
            raise RuntimeError("out of GPU memory")
        self.model.load_state_dict(data.weights)
        self.start = {k: v.clone() for k, v in data.weights.items()}
        optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.model.train()
        for x, y in self.loader:
            optimizer.zero_grad()
            self.loss(self.model(x), y).backward()
            optimizer.step()

    def get_weights(self, extra=None):
        state = self.model.state_dict()
        if self.diff:
            diff = {k: v - self.start[k] for k, v in state.items()}
            return ExchangeObject(weights=diff, weight_type=WeightType.WEIGHT_DIFF)
        return ExchangeObject(weights=state, weight_type=WeightType.WEIGHTS)

    def evaluate(self, data, extra=None):
        self.model.load_state_dict(data.weights)
        m = classification_metrics(*predict(self.model, self.test, self.loss))
        return ExchangeObject(metrics={"auc": m["auc"], "accuracy": m["accuracy"], "n": m["n"]})

    def abort(self, extra=None):
        self.calls.append("abort")

    def finalize(self, extra=None):
        self.calls.append("finalize")


DATA = make_synthetic_sites(3, train_per_site=48, test_per_site=24)


def _builtin(protect="plain") -> Federation:
    torch.manual_seed(0)
    return Federation(
        model_factory=_model, protect=protect, seed=0,
        sites=[make_site(d, batch_size=16, seed=i) for i, d in enumerate(DATA)],
    )  # fmt: skip


def _with_algos(protect="plain", **options) -> tuple[Federation, list[_LoopAlgo]]:
    algos = [_LoopAlgo(d, seed=i, **options) for i, d in enumerate(DATA)]
    fed = Federation(
        model_factory=_model, protect=protect, seed=0,
        sites=[Site(d.name, train=None, test=None, weight=float(d.n_train)) for d in DATA],
        trainer=[ClientAlgoTrainer(a, name=d.name) for a, d in zip(algos, DATA, strict=True)],
    )  # fmt: skip
    return fed, algos


def test_full_weights_give_the_builtin_trainers_aggregate_bit_for_bit():
    builtin, (fed, algos) = _builtin(), _with_algos()
    for _ in range(2):
        mine, theirs = builtin.run_round(), fed.run_round()
        assert np.array_equal(builtin.global_vector, fed.global_vector)
        assert mine.model_sha256 == theirs.model_sha256
    assert algos[0].calls == ["initialize site0", "train", "train"]


def test_weight_differences_give_the_same_aggregate_to_float_precision():
    builtin, (fed, _algos) = _builtin(), _with_algos(diff=True)
    builtin.run_round(), fed.run_round()
    np.testing.assert_allclose(fed.global_vector, builtin.global_vector, atol=1e-6)


@pytest.mark.parametrize("protect", ["secagg", "he"])
def test_the_clientalgo_run_works_under_protection_with_its_own_metrics(protect):
    fed, _algos = _with_algos(protect)
    record = fed.run_round()
    assert record.aborted is None and len(record.clients) == 3
    assert set(record.per_site) == {"site0", "site1", "site2"}
    assert record.metrics["pooled"] == "site mean" and 0 <= record.metrics["auc"] <= 1
    weighted = sum(m["auc"] * m["n"] for m in record.per_site.values()) / 72
    assert record.metrics["auc"] == pytest.approx(weighted)


def test_a_failed_train_aborts_the_algo_and_finalize_reaches_every_algo():
    fed, algos = _with_algos()
    algos[1].fail = True
    with pytest.raises(RuntimeError, match="out of GPU memory"):
        fed.run_round()
    assert algos[1].calls[-2:] == ["train", "abort"]
    fed.finalize()
    assert all(a.calls[-1] == "finalize" for a in algos)


class _Junk(_LoopAlgo):
    def get_weights(self, extra=None):
        return ExchangeObject(weights={"no.such.tensor": torch.zeros(1)},
                              weight_type=WeightType.WEIGHTS)  # fmt: skip


def test_weights_the_model_does_not_have_are_refused_naming_them():
    algos = [_Junk(DATA[0], seed=0)]
    fed = Federation(model_factory=_model, protect="plain",
                     sites=[Site("site0", train=None, test=None, weight=1.0)],
                     trainer=[ClientAlgoTrainer(algos[0], name="site0")])  # fmt: skip
    with pytest.raises(WrongShape, match=r"no\.such\.tensor"):
        fed.run_round()


def test_a_site_without_loaders_needs_a_trainer_that_reads_its_own_data():
    with pytest.raises(TypeError, match="no train loader"):
        Federation(model_factory=_model, sites=[Site("a", train=None, test=None, weight=1.0)])
    with pytest.raises(TypeError, match="ClientAlgo"):
        ClientAlgoTrainer(object(), name="a")


def test_the_example_trains_a_monai_clientalgo_under_secagg():
    path = ROOT / "examples" / "monai_clientalgo.py"
    assert len(path.read_text().splitlines()) <= 80
    records = runpy.run_path(str(path))["main"](rounds=2, sites=3)
    assert [r["aborted"] for r in records] == [None, None]
    assert records[-1]["auc"] > 0.6
