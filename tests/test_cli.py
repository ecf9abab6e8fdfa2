"""``fedshield run`` and ``fedshield experiment survey`` end to end, small."""

import json
from pathlib import Path

import numpy as np
import pytest

from fedshield.cli import main
from fedshield.comparison import compare
from fedshield.engine.models import build_model
from fedshield.protocols.ranges import BUCKETS

ROUND_KEYS = {
    "round",
    "accuracy",
    "auc",
    "loss",
    "clients",
    "dropped",
    "bytes_up_per_client",
    "bytes_down_per_client",
    "client_encode_s",
    "server_aggregate_s",
    "wall_s",
    "critical_path_s",
}


def test_run_writes_the_three_files_with_the_promised_keys(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "--sites",
            "2",
            "--rounds",
            "2",
            "--local-epochs",
            "1",
            "--protect",
            "plain",
            "--dropout",
            '{"input": [1]}',
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert {"fedshield_version", "config", "rounds", "final"} <= set(result)
    assert result["config"]["sites"] == 2 and result["config"]["protect"] == "plain"
    assert result["config"]["dropout_schedule"] == {"input": [1]}
    assert len(result["rounds"]) == 2
    for r in result["rounds"]:
        assert set(r) >= ROUND_KEYS
        assert r["clients"] == [0] and r["dropped"] == [1]
        assert r["bytes_up_per_client"] > 4 * 20_000  # float32 update of the small CNN
    assert {"accuracy", "auc", "sensitivity", "specificity"} <= set(result["final"])
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "| round |" in (out / "report.md").read_text()
    printed = capsys.readouterr().out
    assert "Final test metrics" in printed and "Rounds" in printed


def test_default_run_is_secagg_with_dropout_recovery(tmp_path):
    out = tmp_path / "secagg"
    args = ["run", "--sites", "3", "--rounds", "1", "--local-epochs", "1", "--colluders", "0"]
    code = main([*args, "--dropout", '{"masked_input": [2]}', "--out", str(out)])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["protect"] == "secagg" and result["config"]["quant_bits"] == 8
    (r,) = result["rounds"]
    assert r["clients"] == [0, 1] and r["dropped"] == [2]
    assert r["ring_bits"] == 8 + 2  # fraction weighting: no weight bits in the ring
    assert [s["stage"] for s in r["stages"]] == [
        "advertise_keys",
        "share_keys",
        "masked_input",
        "consistency",
        "unmask",
    ]
    assert result["config"]["model"] == "cnn-gn"  # synthetic sites default to GroupNorm
    dim = sum(p.numel() for p in build_model("cnn-gn").parameters())
    masked = r["stages"][2]["bytes_up"]["0"]
    stat = len(list(build_model("cnn-gn").parameters())) * BUCKETS  # the range statistic
    values = dim + 2 + stat  # the update, the weight and a count, the statistic
    assert values * 10 / 8 < masked < values * 10 / 8 + 100


def test_dropout_schedule_with_an_unknown_stage_is_refused(tmp_path, capsys):
    assert main(["run", "--dropout", '{"input": [1]}', "--out", str(tmp_path)]) == 2
    assert "masked_input" in capsys.readouterr().out


def test_run_with_a_missing_dataset_explains_what_to_do(tmp_path, capsys):
    code = main(["run", "--dataset", f"medmnist:{tmp_path}/none.npz", "--out", str(tmp_path)])
    assert code == 2
    printed = " ".join(capsys.readouterr().out.split())
    assert "none.npz: no such file" in printed and "Pass the path" in printed


@pytest.mark.parametrize("bad", [["--dropout", "{oops"], ["--sites", "0"]])
def test_bad_options_are_reported_not_raised(tmp_path, capsys, bad):
    assert main(["run", *bad, "--out", str(tmp_path)]) == 2
    assert "error" in capsys.readouterr().out


def test_survey_writes_json_and_markdown(tmp_path):
    out = tmp_path / "survey"
    code = main(
        [
            "experiment",
            "survey",
            "--seeds",
            "1",
            "--rounds",
            "1",
            "--local-epochs",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    doc = json.loads((out / "survey.json").read_text())
    assert set(doc["summary"]) == {"Single", "Cross", "Mix", "FedSGD", "FedAvg", "FedProx"}
    for metrics in doc["summary"].values():
        assert set(metrics) == {"accuracy", "auc", "sensitivity", "specificity"}
    assert "| FedAvg |" in (out / "survey.md").read_text()


def test_compression_options_reach_the_wire_and_the_result(tmp_path):
    out = tmp_path / "compressed"
    args = ["run", "--sites", "2", "--rounds", "2", "--local-epochs", "1", "--protect", "plain"]
    extra = ["--quant-bits", "4", "--sparsify", "topk:0.1", "--error-feedback"]
    assert main([*args, *extra, "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["sparsify"] == "topk:0.1" and result["config"]["error_feedback"]
    r = result["rounds"][0]
    assert r["protocol"]["sparsify"] == "topk" and r["protocol"]["quant_bits"] == 4
    dim = result["rounds"][0]["protocol"]["k"] * 10
    # 10% of the values at 4 bits, plus packed indices and chunk ranges: far below float32.
    assert r["bytes_up_per_client"] < 0.1 * 4 * dim


def test_topk_under_secagg_is_refused_with_the_reason(tmp_path, capsys):
    code = main(["run", "--sparsify", "topk:0.1", "--rounds", "1", "--out", str(tmp_path / "x")])
    assert code == 2
    assert "randk" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("scheme", "weighting"), [("bfv", "fraction"), ("bfv", "integer"), ("ckks", None)]
)
def test_he_run_records_ciphertext_costs_and_survives_a_dropout(tmp_path, scheme, weighting):
    out = tmp_path / scheme
    args = ["run", "--protect", "he", "--he-scheme", scheme, "--sites", "3", "--rounds", "2"]
    if weighting:
        args += ["--he-weighting", weighting]
    code = main([*args, "--local-epochs", "1", "--dropout", '{"input": [2]}', "--out", str(out)])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    for r in result["rounds"]:
        assert r["clients"] == [0, 1] and r["dropped"] == [2]
        p = r["protocol"]
        assert p["name"] == "he" and p["scheme"] == scheme and p["weighting"] == weighting
        assert p["ciphertext_bytes_up"] > 0 and p["ciphertext_bytes_down"] > 0
        assert p["encrypt_s"] > 0 and p["sum_s"] > 0 and p["decrypt_s"] > 0
    assert result["rounds"][-1]["auc"] > 0.5


def test_compare_plain_trains_the_twin_once_and_reports_the_ratios(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the twin cache lives under ./runs/plain-twins
    args = ["run", "--sites", "2", "--rounds", "2", "--local-epochs", "1", "--compare-plain"]
    assert main([*args, "--out", "a"]) == 0
    first = json.loads((tmp_path / "a" / "result.json").read_text())
    comparison = first["comparison"]
    twin = json.loads(Path(comparison["plain_result"]).read_text())
    assert twin["config"]["protect"] == "plain" and twin["config"]["quant_bits"] is None
    assert comparison["plain_auc"] == twin["final"]["auc"]
    assert comparison["auc_gap"] == first["final"]["auc"] - twin["final"]["auc"]
    fp32 = np.median([r["bytes_up_per_client"] for r in twin["rounds"][1:]])
    assert comparison["uplink_ratio"] == first["rounds"][1]["bytes_up_per_client"] / fp32 < 0.35
    assert "Against plain fp32" in (tmp_path / "a" / "report.md").read_text()
    assert "training the plain fp32 twin" in capsys.readouterr().out
    assert main([*args, "--out", "b"]) == 0  # the second time it is read from the cache
    out = capsys.readouterr().out
    assert "training the plain fp32 twin" not in out and "vs plain fp32" in out


def test_compare_plain_refuses_a_run_that_is_not_the_twin(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = ["run", "--sites", "2", "--rounds", "1", "--local-epochs", "1"]
    assert main([*base, "--protect", "plain", "--seed", "3", "--out", "p"]) == 0
    code = main([*base, "--compare-plain", "p/result.json", "--out", "s"])
    assert code == 2 and "differs in seed" in capsys.readouterr().out


def test_a_wrong_compare_plain_path_fails_before_any_training(tmp_path, capsys):
    args = ["run", "--sites", "2", "--rounds", "3", "--out", str(tmp_path / "r")]
    assert main([*args, "--compare-plain", str(tmp_path / "missing.json")]) == 2
    out = capsys.readouterr().out
    assert "cannot read" in out and "round 1" not in out


def test_the_critical_path_ratio_does_not_depend_on_the_twins_load():
    """A twin trained on a busy machine (100x slower training) gives the same ratio: the
    twin's path is rebuilt from this run's training plus the twin's protocol time."""

    def row(train, protocol, up):
        return {"site_train_s": {"0": train, "1": train / 2}, "critical_path_s": train + protocol,
                "bytes_up_per_client": up, "auc": 0.9}  # fmt: skip

    run = {"rounds": [row(9.0, 9.0, 30), row(1.0, 0.2, 30)], "final": {"auc": 0.9}}
    for slow in (1.0, 100.0):
        twin = {"rounds": [row(slow, 0.01, 90), row(slow, 0.05, 90)], "final": {"auc": 0.91}}
        c = compare(run, twin)
        assert c["critical_path_ratio"] == pytest.approx(1.2 / 1.05)
        assert c["uplink_ratio"] == pytest.approx(1 / 3) and c["auc_gap"] == pytest.approx(-0.01)
