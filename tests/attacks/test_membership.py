"""Membership inference: valid AUCs, high on an overfit model, chance on an untrained one;
and ``fedshield bench privacy`` end to end on its tiny hidden preset."""

import json

import numpy as np
import pytest
import torch

from fedshield.attacks import attack_aucs, per_example_loss
from fedshield.attacks.membership import train_reference
from fedshield.cli import main
from fedshield.engine.models import SmallCNN
from fedshield.errors import ConfigError


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 2, size=80).astype(np.int64)  # random labels: only memory helps
    return (x[:40], y[:40]), (x[40:], y[40:])


def _aucs(model, members, others, reference=None):
    refs = () if reference is None else (
        per_example_loss(reference, *members), per_example_loss(reference, *others))  # fmt: skip
    return attack_aucs(per_example_loss(model, *members), per_example_loss(model, *others), *refs)


def test_an_overfit_model_gives_its_members_away(data):
    members, others = data
    torch.manual_seed(0)
    model = train_reference(SmallCNN(1, 2, width=8), *members, epochs=60, batch_size=8, lr=1e-2)
    torch.manual_seed(1)
    reference = train_reference(SmallCNN(1, 2, width=8), *others, epochs=60, batch_size=8)
    aucs = _aucs(model, members, others, reference)
    assert aucs["loss_threshold"] > 0.8, aucs
    assert aucs["calibrated"] > 0.8, aucs


def test_an_untrained_model_is_chance(data):
    members, others = data
    torch.manual_seed(0)
    aucs = _aucs(SmallCNN(1, 2, width=8), members, others)
    assert 0.3 < aucs["loss_threshold"] < 0.7, aucs
    assert set(aucs) == {"loss_threshold"}


def test_bad_inputs_are_refused(data):
    (x, y), _ = data
    with pytest.raises(ConfigError):
        attack_aucs(np.array([]), np.array([1.0]))
    with pytest.raises(ConfigError):
        attack_aucs(np.array([np.nan]), np.array([1.0]))
    with pytest.raises(ConfigError):
        attack_aucs(np.array([1.0]), np.array([1.0]), np.array([1.0]), np.array([]))
    with pytest.raises(ConfigError):
        per_example_loss(SmallCNN(1, 2, width=4), x, y[:-1])
    with pytest.raises(ConfigError):
        train_reference(SmallCNN(1, 2, width=4), x, y, epochs=0)


def test_bench_privacy_writes_json_markdown_and_plots(tmp_path):
    assert main(["bench", "privacy", "--tiny", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "bench-privacy.json").read_text())
    scenarios = {r["scenario"] for r in doc["inversion"]}
    assert {"plain-fedsgd-b1-site0", "secagg-sum4-as-1-image", "secagg-sum4-as-4-sites"} <= (
        scenarios
    )
    assert {"secagg-sum10-as-1-image", "he-threshold-sum4-as-1-image"} <= scenarios
    noised = [
        r for r in doc["inversion"] if r["scenario"] == "secagg-sum4-distributed-dp-as-1-image"
    ]
    assert noised[0]["privacy"]["dp_mode"] == "distributed" and "control" in noised[0]["references"]
    for row in doc["inversion"]:
        assert np.isfinite(row["psnr_mean"]) and -1 <= row["ssim_mean"] <= 1
        assert {"unrelated_matched", "dataset_mean"} <= set(row["references"])
        if "control" in row["references"]:  # victim-absent rounds, scored like the attack
            assert len(row["references"]["control"]["values"]) == 2
            assert row["verdict"] in ("leaks", "at reference")
        assert (tmp_path / f"inversion-{row['scenario']}.png").read_bytes()[:4] == b"\x89PNG"
    assert [m["dp"] is None for m in doc["membership"]] == [True, False]
    assert all(0 <= m["auc_loss_threshold"] <= 1 for m in doc["membership"])
    assert doc["membership"][1]["epsilon"] > 0
    assert "Gradient inversion" in (tmp_path / "bench-privacy.md").read_text()
