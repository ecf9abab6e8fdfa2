"""A real ``monai.fl.client.MonaiAlgo`` over a MONAI bundle as a fedshield site trainer.

The bundle is written into a pytest temporary directory: ``configs/train.json`` (a tiny 2D
DenseNet121, ``SupervisedTrainer`` for 1 epoch on the CPU over ``.npy`` images read by
``LoadImaged``) and ``configs/evaluate.json`` (a ``SupervisedEvaluator`` reporting ROC AUC and
accuracy), the layout ``MonaiAlgo`` reads by default. Both sites share the bundle; each
reads its own data directory through the ``dataset_dir`` override (``train_kwargs`` /
``eval_kwargs``). MonaiAlgo sends weight differences (its default ``send_weight_diff=True``),
which ``ClientAlgoTrainer`` must add to the round's global weights. MonaiAlgo needs
pytorch-ignite, which the ``dev`` and ``monai-fl`` extras install: without it this file is
skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.fl.utils.constants import WeightType
from monai.networks.nets import DenseNet121

from fedshield.engine import Federation
from fedshield.engine.client_algo import ClientAlgoTrainer
from fedshield.engine.site import Site

# MonaiAlgo and MONAI's engines need pytorch-ignite (>= 0.4.10), an extra (dev, monai-fl):
# without it there is no MonaiAlgo to test
pytest.importorskip("ignite", minversion="0.4.10")
from monai.fl.client import MonaiAlgo

N_TRAIN, N_VAL, SIZE = 16, 8, 16
NET = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 2,
    "init_features": 4,
    "growth_rate": 4,
    "block_config": [1, 1],
}


def _network() -> DenseNet121:
    """The bundle's ``network_def``, for the federation's model (same state-dict keys)."""
    return DenseNet121(**{**NET, "block_config": tuple(NET["block_config"])})


def _preprocessing() -> dict:
    return {
        "_target_": "Compose",
        "transforms": [
            {
                "_target_": "LoadImaged",
                "keys": "image",
                "reader": "NumpyReader",
                "image_only": True,
            },
            {"_target_": "EnsureChannelFirstd", "keys": "image", "channel_dim": "no_channel"},
            {
                "_target_": "EnsureTyped",
                "keys": "image",
                "dtype": "$torch.float32",
                "track_meta": False,
            },
        ],
    }


def _datalist(section: str) -> str:
    return (
        f"$monai.data.load_decathlon_datalist(@dataset_dir + '/datalist.json', False, '{section}')"
    )


TRAIN = {
    "bundle_root": ".",
    "dataset_dir": "unset: each site overrides it",
    "device": "$torch.device('cpu')",
    "network_def": {"_target_": "DenseNet121", **NET},
    "network": "$@network_def.to(@device)",
    "train": {
        "preprocessing": _preprocessing(),
        "dataset": {
            "_target_": "Dataset",
            "data": _datalist("training"),
            "transform": "@train#preprocessing",
        },
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@train#dataset",
            "batch_size": 4,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": {"_target_": "SimpleInferer"},
        "trainer": {
            "_target_": "SupervisedTrainer",
            "max_epochs": 1,
            "device": "@device",
            "train_data_loader": "@train#dataloader",
            "network": "@network",
            "loss_function": "$torch.nn.CrossEntropyLoss()",
            "optimizer": {
                "_target_": "torch.optim.Adam",
                "params": "$@network.parameters()",
                "lr": 0.01,
            },
            "inferer": "@train#inferer",
            "amp": False,
        },
    },
    "run": ["$@train#trainer.run()"],
}

EVALUATE = {
    "validate": {
        "preprocessing": _preprocessing(),
        "dataset": {
            "_target_": "Dataset",
            "data": _datalist("validation"),
            "transform": "@validate#preprocessing",
        },
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@validate#dataset",
            "batch_size": 4,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "CopyItemsd", "keys": "pred", "names": "pred_class"},
                {"_target_": "AsDiscreted", "keys": "pred_class", "argmax": True, "to_onehot": 2},
                {"_target_": "AsDiscreted", "keys": "label", "to_onehot": 2},
            ],
        },
        "key_metric": {
            "val_auc": {
                "_target_": "ROCAUC",
                "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
            },
        },
        "additional_metrics": {
            "val_accuracy": {
                "_target_": "ConfusionMatrix",
                "metric_name": "accuracy",
                "output_transform": "$monai.handlers.from_engine(['pred_class', 'label'])",
            },
        },
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@validate#dataloader",
            "network": "@network",
            "inferer": "@validate#inferer",
            "postprocessing": "@validate#postprocessing",
            "key_val_metric": "@validate#key_metric",
            "additional_metrics": "@validate#additional_metrics",
            "amp": False,
        },
    },
    "run": ["$@validate#evaluator.run()"],
}


def _site_data(root: Path, seed: int) -> Path:
    """``.npy`` images (a bright square marks class 1) and their ``datalist.json``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    lists = {}
    for section, n in (("training", N_TRAIN), ("validation", N_VAL)):
        items = []
        for i in range(n):
            label = i % 2
            image = rng.normal(0.0, 0.5, size=(SIZE, SIZE)).astype(np.float32)
            if label:
                image[4:12, 4:12] += 1.5
            np.save(root / f"{section}_{i}.npy", image)
            items.append({"image": f"{section}_{i}.npy", "label": label})
        lists[section] = items
    (root / "datalist.json").write_text(json.dumps(lists))
    return root


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("bundle")
    (root / "configs").mkdir()
    (root / "configs" / "train.json").write_text(json.dumps(TRAIN, indent=1))
    (root / "configs" / "evaluate.json").write_text(json.dumps(EVALUATE, indent=1))
    data = [_site_data(root.parent / f"{root.name}_data" / f"site{i}", seed=i) for i in range(2)]
    return root, data


def _federation(bundle, protect: str) -> tuple[Federation, list[MonaiAlgo]]:
    root, data = bundle
    algos = [
        MonaiAlgo(
            bundle_root=str(root),
            train_kwargs={"dataset_dir": str(d)},
            eval_kwargs={"dataset_dir": str(d)},
        )
        for d in data
    ]
    fed = Federation(
        model_factory=_network,
        protect=protect,
        seed=0,
        sites=[Site(f"site{i}", train=None, test=None, weight=float(N_TRAIN)) for i in range(2)],
        trainer=[ClientAlgoTrainer(a, name=f"site{i}") for i, a in enumerate(algos)],
    )
    return fed, algos


def test_monai_algo_over_a_bundle_trains_and_evaluates_as_fedshield_sites(bundle):
    fed, algos = _federation(bundle, "plain")
    assert all(a.trainer.network is not a.evaluator.network for a in algos)  # train + eval
    start = fed.global_vector.copy()

    record = fed.run_round()
    assert record.aborted is None and len(record.clients) == 2
    # the sites' weight differences were added to the round's weights: the new global model
    # is the (equal-weight) mean of the two local models MonaiAlgo trained
    local = [fed.spec.flatten(a.trainer.network) for a in algos]
    assert not np.allclose(local[0], start, atol=1e-4)
    np.testing.assert_allclose(fed.global_vector, (local[0] + local[1]) / 2, atol=1e-5)
    # ... and what MonaiAlgo sent was a difference from them
    sent = algos[0].get_weights({})
    assert sent.weight_type == WeightType.WEIGHT_DIFF
    np.testing.assert_allclose(
        fed.spec.flatten(
            {k: v + torch.as_tensor(sent.weights[k]) for k, v in fed.spec.unflatten(start).items()}
        ),
        local[0],
        atol=1e-6,
    )
    assert not np.allclose(fed.global_vector, start, atol=1e-4)
    # MonaiAlgo's evaluator reports its metrics per site
    assert set(record.per_site) == {"site0", "site1"}
    for metrics in record.per_site.values():
        assert "error" not in metrics, metrics
        assert 0 <= metrics["val_auc"] <= 1 and 0 <= metrics["val_accuracy"] <= 1
    assert record.metrics["pooled"] == "unweighted site mean"  # MonaiAlgo gives no n

    round1 = fed.global_vector.copy()
    record = fed.run_round()
    assert record.aborted is None
    assert not np.allclose(fed.global_vector, round1, atol=1e-4)
    local = [fed.spec.flatten(a.trainer.network) for a in algos]
    np.testing.assert_allclose(fed.global_vector, (local[0] + local[1]) / 2, atol=1e-5)
    assert record.per_site["site0"]["val_auc"] >= 0.5
    fed.finalize()


def test_monai_algo_over_a_bundle_under_secagg(bundle):
    fed, algos = _federation(bundle, "secagg")
    start = fed.global_vector.copy()
    record = fed.run_round()
    assert record.aborted is None and len(record.clients) == 2
    assert not np.allclose(fed.global_vector, start, atol=1e-4)
    # the mean of the sites' differences, quantized (8 bits) on round one's public ranges:
    # 2^-3 for a trainable tensor, 1 for a buffer (fedshield.protocols.ranges), which clip
    # what moved further (here a BatchNorm running variance)
    limit = np.concatenate(
        [np.full(e.size, 0.125 if e.trainable else 1.0) for e in fed.spec.entries]
    )
    moves = [np.clip(fed.spec.flatten(a.trainer.network) - start, -limit, limit) for a in algos]
    error = np.abs(fed.global_vector - (start + (moves[0] + moves[1]) / 2))
    assert (error <= limit / 64).all(), (error / limit).max()
    assert set(record.per_site) == {"site0", "site1"}
    assert all(0 <= m["val_auc"] <= 1 for m in record.per_site.values())
