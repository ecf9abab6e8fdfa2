"""``fedshield run --task segmentation`` end to end, small: Dice in the output and the files."""

import json

import numpy as np
import pytest

from fedshield.cli import main
from fedshield.comparison import compare, comparison_line


def _segmentation_npz(path, n=(16, 8)):
    """Bright squares on noise, their masks the squares."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, size in zip(("train", "test"), n, strict=True):
        masks = np.zeros((size, 28, 28), np.uint8)
        for i, (y, x) in enumerate(rng.integers(4, 20, size=(size, 2))):
            masks[i, y : y + 5, x : x + 5] = 1
        images = rng.normal(0.3, 0.05, size=(size, 28, 28)) + 0.5 * masks
        arrays[f"{split}_images"] = images.astype(np.float32)
        arrays[f"{split}_masks"] = masks
    np.savez(path, **arrays)
    return path


def test_a_segmentation_run_prints_and_writes_dice(tmp_path, capsys):
    out = tmp_path / "run"
    dataset = _segmentation_npz(tmp_path / "seg.npz")
    args = ["run", "--task", "segmentation", "--dataset", str(dataset), "--sites", "2",
            "--rounds", "2", "--local-epochs", "1", "--batch-size", "8",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "round 1: Dice " in printed and "round 2: Dice " in printed
    assert "AUC" not in printed and "model unet" in printed
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["task"] == "segmentation" and result["config"]["model"] == "unet"
    assert all(0 <= r["dice"] <= 1 for r in result["rounds"])
    assert result["final"]["dice"] == result["rounds"][-1]["dice"]
    assert result["final"]["auc"] is None  # no class probabilities: NaN, written as null
    assert {m["n"] for m in result["final"]["per_site"].values()} == {4}
    report = (out / "report.md").read_text()
    assert "| round | Dice | loss |" in report and "| site | Dice | loss |" in report
    assert "AUC" not in report.split("Configuration:")[0]
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_segmentation_over_flower_is_refused_with_the_reason(tmp_path, capsys):
    args = ["run", "--task", "segmentation", "--transport", "flower", "--out", str(tmp_path)]
    assert main(args) == 2
    printed = capsys.readouterr().out
    assert "runs in process only" in printed and "--transport inprocess" in printed


def test_the_comparison_with_plain_reports_dice_for_segmentation():
    def document(dice: float, up: float) -> dict:
        row = {"bytes_up_per_client": up, "critical_path_s": 1.0, "site_train_s": {"0": 0.5}}
        return {"rounds": [row], "final": {"auc": float("nan"), "dice": dice}}

    c = compare(document(0.74, 100.0), document(0.735, 300.0))
    assert c["dice"] == 0.74 and c["plain_dice"] == 0.735
    assert c["dice_gap"] == pytest.approx(0.005)
    line = comparison_line(c)
    assert "Dice 0.740 vs 0.735 (+0.005)" in line and "AUC" not in line
