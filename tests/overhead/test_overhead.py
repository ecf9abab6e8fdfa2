"""``fedshield bench overhead``: the tiny grid through the real CLI, its files and its numbers."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from fedshield.errors import ConfigError
from fedshield.overhead.grid import PRESETS, Preset, model_shapes, run_grid
from fedshield.overhead.measure import PROTECTIONS, measure, update_layers
from fedshield.overhead.report import COLUMNS, add_ratios, markdown

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from fedshield.cli import main

    out = tmp_path_factory.mktemp("overhead")
    assert main(["bench", "overhead", "--tiny", "--out", str(out)]) == 0
    return out, json.loads((out / "bench.json").read_text())


def _ok(doc, protection, n):
    (row,) = [c for c in doc["cells"] if c["protection"] == protection and c["n"] == n]
    assert row["status"] == "ok", row
    return row


def test_tiny_grid_writes_json_markdown_and_log_scale_plots(tiny_run):
    out, doc = tiny_run
    assert doc["command"] == "fedshield bench overhead" and doc["preset"] == "tiny"
    assert {c["protection"] for c in doc["cells"]} == set(PROTECTIONS)
    assert set(doc["auc"]) == set(PROTECTIONS)
    text = (out / "bench.md").read_text()
    assert all(p in text for p in PROTECTIONS)
    for column in COLUMNS:
        with Image.open(out / f"overhead-{column}.png") as image:
            assert image.size[0] > 100 and image.size[1] > 100


def test_every_protection_is_measured_and_compared_with_its_peer(tiny_run):
    _, doc = tiny_run
    for protection in PROTECTIONS:
        row = _ok(doc, protection, 3)
        assert row["client_s"] > 0 and row["server_s"] > 0 and row["critical_s"] > 0
        assert row["bytes_up"] > 0 and row["bytes_down"] > 0
        assert row["vs_plain"]["bytes_up_over_plain"] > 0
    for ours, peer in (("secagg", "flower-secagg+"), ("he-shared", "flare-he"),
                       ("he-threshold", "flare-he")):  # fmt: skip
        row = _ok(doc, ours, 3)
        assert row["peer"] == peer
        assert set(row["vs_peer"]) == {f"{c}_peer_over_ours" for c in COLUMNS}
        expected = _ok(doc, peer, 3)["bytes_up"] / row["bytes_up"]
        assert row["vs_peer"]["bytes_up_peer_over_ours"] == pytest.approx(expected)


def test_bytes_follow_the_protocols(tiny_run):
    _, doc = tiny_run
    plain = _ok(doc, "plain", 3)
    fp32 = plain["fp32_bytes"]
    assert fp32 <= plain["bytes_up"] < fp32 + 1024  # float32 and a header
    secagg = _ok(doc, "secagg", 3)
    assert secagg["bytes_up"] < plain["bytes_up"]  # 8-bit masked values, keys and shares
    assert secagg["vs_plain"]["bytes_up_over_plain"] < 1
    assert _ok(doc, "flare-he", 3)["bytes_up"] > 10 * fp32  # CKKS, one vector per layer
    assert _ok(doc, "he-shared", 3)["bytes_up"] < _ok(doc, "flare-he", 3)["bytes_up"]
    # the quantizing protocols' mean is within a quantization step of the exact one
    for name in ("secagg", "flower-secagg+"):
        assert _ok(doc, name, 3)["max_abs_error"] <= 2 * 0.2 / 255


def test_refused_cells_are_recorded_with_their_reason(tiny_run):
    _, doc = tiny_run
    (row,) = [c for c in doc["cells"] if c["protection"] == "flower-secagg+" and c["n"] == 2]
    assert row["status"] == "refused" and "num_shares" in row["reason"]
    assert "refused" in markdown(doc)


def test_peers_carry_no_auc_and_ours_train(tiny_run):
    _, doc = tiny_run
    for name, kind in ((p, o["kind"]) for p, o in PROTECTIONS.items()):
        result = doc["auc"][name]
        if kind == "ours":
            assert 0 <= result["auc"] <= 1 and result["rounds"] == 1
        else:
            assert result["auc"] is None and result["reason"]


def test_training_is_cached_under_the_output_folder(tiny_run):
    from fedshield.overhead.training import train_auc

    out, doc = tiny_run
    again = train_auc(PRESETS["tiny"], "plain", out / "auc-cache")
    assert again["cached"] and again["auc"] == doc["auc"]["plain"]["auc"]


def test_a_cell_over_the_budget_is_skipped_with_its_estimate():
    preset = Preset("t", ("tiny", "cnn"), (3,), 1e-9, auc_dataset=None,
                    protections=("plain",))  # fmt: skip
    rows = run_grid(preset)
    assert rows[0]["status"] == "ok"  # nothing measured yet: no estimate
    assert rows[1]["status"] == "skipped" and "estimated" in rows[1]["reason"]
    add_ratios(rows)


def test_measure_refuses_an_unknown_protection_with_a_typed_error():
    with pytest.raises(ConfigError, match="unknown protection"):
        measure("rot13", update_layers([(4,)]), 3)


def test_update_shapes_come_from_the_models_state_dicts():
    cnn = model_shapes("cnn")
    assert sum(int(__import__("math").prod(s)) for s in cnn) > 1000
    assert model_shapes("tiny") != cnn


def test_bytes_down_counts_the_protocol_alone_and_beside_it_the_model(tiny_run):
    _, doc = tiny_run
    for protection in PROTECTIONS:
        row = _ok(doc, protection, 3)
        fp32 = row["fp32_bytes"]
        assert row["bytes_down_with_model"] == row["bytes_down"] + row["model_bytes_down"]
        if protection in ("plain", "secagg", "flower-secagg+"):  # the float32 model, framed
            assert fp32 <= row["model_bytes_down"] < fp32 + 1024, protection
        elif protection == "flare-he":  # the encrypted sum is the model a site decrypts
            assert row["model_bytes_down"] == 0
        else:  # he: the sites hold the model; a round starts with a short message
            assert 0 < row["model_bytes_down"] < 100
    # Flower's fit instructions carry the model: taken out of its protocol's bytes down
    flower = _ok(doc, "flower-secagg+", 3)
    assert flower["bytes_down"] < fp32 < flower["bytes_down_with_model"]
    ours = _ok(doc, "secagg", 3)
    for column in ("bytes_down", "bytes_down_with_model"):
        ratio = ours["vs_peer"][f"{column}_peer_over_ours"]
        assert ratio == pytest.approx(flower[column] / ours[column])
    assert "down+model B" in markdown(doc)


@pytest.mark.parametrize("protect", ["plain", "secagg", "he"])
def test_the_model_bytes_are_what_the_engine_sends_a_deployed_site(protect):
    from types import SimpleNamespace

    from fedshield.engine.experiment import RunConfig, build_federation
    from fedshield.engine.flower.apps import _round_start
    from fedshield.overhead.broadcast import model_broadcast_bytes

    fed = build_federation(RunConfig(protect=protect, sites=3, rounds=1))
    shapes = [e.shape for e in fed.spec.entries]
    server = SimpleNamespace(round=1, last_aggregate_round=0, broadcast=fed.server.broadcast)
    sent = _round_start(server, protect == "he")  # what the Flower ServerApp sends
    assert model_broadcast_bytes(fed.protocol, shapes) == len(sent)
    if protect != "he":
        assert len(sent) == len(fed.server.broadcast()) > 4 * fed.spec.dim


def test_secure_evaluation_is_measured_beside_the_training_round(tiny_run):
    from fedshield.overhead.eval_cost import EVAL_PROTECTIONS

    out, doc = tiny_run
    rows = {(r["protection"], r["n"]): r for r in doc["evaluation"]}
    assert set(rows) == {(p, n) for p in EVAL_PROTECTIONS for n in PRESETS["tiny"].sites}
    for protection in EVAL_PROTECTIONS:
        row = rows[(protection, 3)]
        assert row["status"] == "ok" and row["values"] == 8197  # n, confusion, 2 x 4096 bins
        assert row["client_s"] > 0 and row["server_s"] > 0 and row["critical_s"] > 0
        assert row["bytes_up"] > row["values"] // 8  # every count travels, masked or encrypted
        train = _ok(doc, protection, 3)
        assert row["vs_train"]["tiny"]["bytes_up"] == pytest.approx(
            row["bytes_up"] / train["bytes_up"]
        )
    assert "Secure evaluation" in (out / "bench.md").read_text()


def test_only_a_protection_with_a_count_session_is_measured():
    from fedshield.overhead.eval_cost import measure_evaluation

    for protection in ("plain", "flower-secagg+", "flare-he"):
        with pytest.raises(ConfigError, match="no secure evaluation"):
            measure_evaluation(protection, 3)


def test_training_runs_on_one_torch_thread_and_its_path_includes_the_training(tiny_run, tmp_path):
    import torch

    from fedshield.overhead.training import train_auc

    _, doc = tiny_run
    for protection in ("plain", "secagg", "he-shared", "he-threshold"):
        result = doc["auc"][protection]
        assert result["torch_threads"] == 1
        for path, train in zip(result["critical_path_s_per_round"],
                               result["slowest_train_s_per_round"], strict=True):  # fmt: skip
            assert path > train > 0
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert train_auc(PRESETS["tiny"], "plain", tmp_path)["torch_threads"] == 1
        assert torch.get_num_threads() == 2  # the process's own setting comes back
    finally:
        torch.set_num_threads(before)
