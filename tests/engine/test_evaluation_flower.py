"""No message from a site to the server holds an example's label or prediction (issue 19):
checked on the bytes each site process of a real Flower deployment sent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fedshield import wire
from fedshield.crypto import ring
from fedshield.engine.evaluation import summary_length
from fedshield.engine.experiment import RunConfig
from fedshield.engine.flower.deploy import run_on_flower
from fedshield.protocols.registry import MODEL_BROADCAST

pytestmark = pytest.mark.flower

CAPTURE = Path(__file__).parent / "capture"  # its sitecustomize records what the sites send


def _encodings(labels: np.ndarray, probs: np.ndarray) -> dict[str, list[bytes]]:
    """Byte patterns that would betray the test set: the label vector, the probability
    matrix and class 1's column in every dtype a site might send them in, windows of 4
    consecutive probabilities, every probability that is not 0 or 1 (which a count could
    equal) as a float64, and windows of 8 labels holding each class at least twice, in all
    but float64 (a summary's own dtype: its sparse histograms of 0 and 1 counts hold such
    runs of 0.0 and 1.0 by chance)."""
    labels = np.asarray(labels)
    probs = np.asarray(probs)
    patterns = {"labels": [], "probabilities": []}
    for dtype in ("<f8", "<f4", "<i8", "<i4"):
        encoded = labels.astype(dtype)
        patterns["labels"] += [encoded.tobytes()]
        if dtype == "<f8":
            continue
        windows = [encoded[i : i + 8] for i in range(len(labels) - 7)]
        mixed = [w for w in windows if 2 <= np.count_nonzero(w) <= 6]
        patterns["labels"] += [w.tobytes() for w in mixed]
    for dtype in ("<f8", "<f4"):
        for vector in (probs.reshape(-1), probs[:, 1]):
            encoded = vector.astype(dtype)
            patterns["probabilities"] += [encoded.tobytes()]
            patterns["probabilities"] += [
                encoded[i : i + 4].tobytes() for i in range(len(vector) - 3)
            ]
    inner = probs[(probs > 0) & (probs < 1)].astype("<f8")
    patterns["probabilities"] += [value.tobytes() for value in inner]
    return patterns


def _leaks(message: bytes, patterns: dict[str, list[bytes]]) -> list[str]:
    return [what for what, found in patterns.items() if any(p in message for p in found)]


def test_the_leak_detector_finds_the_old_evaluation_reply():
    """The check below can fail: the evaluation reply sites sent before issue 19 (labels and
    probabilities as float64) is caught, and so is a float32 copy of one probability row."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 30)
    probs = rng.dirichlet(np.ones(2), 30).astype(np.float32)
    header = wire.Header(MODEL_BROADCAST, 1, 1, 0)
    old = wire.serialize(header, [labels.astype(np.float64), probs.astype(np.float64).ravel(),
                                  np.array([0.5]), b"", b""])  # fmt: skip
    patterns = _encodings(labels, probs)
    assert _leaks(old, patterns) == ["labels", "probabilities"]
    assert _leaks(b"x" + probs[3:7, 1].tobytes(), patterns) == ["probabilities"]


def test_no_site_message_to_the_server_holds_a_label_or_prediction(tmp_path, monkeypatch):
    capture = tmp_path / "capture"
    capture.mkdir()
    path = os.pathsep.join([str(CAPTURE), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)  # the deployment's processes inherit it
    monkeypatch.setenv("FEDSHIELD_CAPTURE", str(capture))
    config = RunConfig(protect="secagg", sites=3, rounds=1, local_epochs=1)
    (row,) = run_on_flower(config, tmp_path / "out", stage_timeout=30)
    assert row["aborted"] is None and row["clients"] == [0, 1, 2]
    assert row["binned"] == ["auc"] and 0 <= row["auc"] <= 1
    assert row["pooled"] == "summed under secagg" and len(row["pooled_sites"]) == 3

    oracles = sorted(capture.glob("*-predictions.npz"))
    assert len(oracles) == 3  # each site's own evaluation, recorded in its process
    pids = {f.name.split("-")[0] for f in oracles}
    sent = {pid: sorted(capture.glob(f"{pid}-*.bin")) for pid in pids}
    kinds = {f.name.split("-", 2)[2] for files in sent.values() for f in files}
    assert {"hello.bin", "train.bin", "evaluate.bin", "stage_masked_input.bin",
            "evalstage_masked_input.bin"} <= kinds  # fmt: skip
    pooled = {"tp": 0}
    for oracle in oracles:
        pid = oracle.name.split("-")[0]
        predictions = np.load(oracle)
        labels, probs = predictions["labels"], predictions["probs"]
        assert len(labels) >= 8 and len(set(labels.tolist())) == 2
        patterns = _encodings(labels, probs)
        for message in sent[pid]:
            assert _leaks(message.read_bytes(), patterns) == [], message.name
        (reply,) = [f for f in sent[pid] if f.name.endswith("-evaluate.bin")]
        fields = wire.parse(reply.read_bytes()).fields
        # under secagg no summary in the clear: its counts go masked in the count session
        assert fields[0].size == 0 and fields[4] == b"\x01" and len(fields[1]) < 1024
        (masked,) = [f for f in sent[pid] if f.name.endswith("-evalstage_masked_input.bin")]
        packed = wire.parse(masked.read_bytes()).raw(3)
        dim, bits = summary_length(2) - 1, 18  # ring of 3 sites of at most 65,535 counts
        values = ring.unpack(packed, dim + 2, bits)[:dim].astype(np.int64)
        counts = np.bincount(values >> (bits - 6), minlength=64)
        expected = len(values) / 64
        assert ((counts - expected) ** 2 / expected).sum() < 120  # uniform: df 63, p < 1e-5
        pooled["tp"] += int(((probs[:, 1] >= 0.5) & (labels == 1)).sum())
    positives = sum(int(np.load(o)["labels"].sum()) for o in oracles)
    assert row["sensitivity"] == pooled["tp"] / positives
