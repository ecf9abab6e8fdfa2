"""The benchmark scripts stay runnable: each runs in its quick form and writes its JSON."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_secagg_quick_runs_both_sides_and_both_are_accurate(tmp_path):
    _load("bench_secagg").main(["--quick", "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "secagg.json").read_text())
    for c in doc["cases"] + [c for c in doc["sweep"] if c["flower"]]:
        step = 2 * 0.1 / 255
        assert c["ours"]["max_abs_error"] <= step and c["flower"]["max_abs_error"] <= 2 * step
        assert c["bytes_up_per_client_flower_over_ours"] > 1
    assert all(c["dropped"] for c in doc["sweep"])
    assert (tmp_path / "secagg_server_time.png").exists()


def test_bench_wire_runs(tmp_path):
    _load("bench_wire").main(["--dims", "1000", "--repeats", "1", "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "wire.json").read_text())
    assert doc["cases"][0]["ours"]["bytes"] < doc["cases"][0]["flower"]["bytes"] + 200


def test_bench_kernels_quick_reports_every_kernel_against_its_baselines(tmp_path):
    doc = _load("bench_kernels").main(["--quick", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "kernels.json").read_text()) == json.loads(json.dumps(doc))
    cases = doc["cases"]
    assert {"quantize_fixed_8bit", "topk_exact_1pct", "randk_1pct", "pack_12bit"} <= set(cases)
    assert {"numpy_over_ours", "torch_over_ours", "flower_over_ours"} <= set(
        cases["quantize_fixed_8bit"]
    )
    assert all(t["compile_s"] > 0 and t["cache_load_s"] > 0 for t in doc["first_call"].values())
    assert set(doc["targets"]) and all("met" in t for t in doc["targets"].values())


def test_bench_he_quick_compares_with_the_flare_way(tmp_path):
    doc = _load("bench_he").main(["--quick", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "he.json").read_text())["cases"]
    for case in doc["cases"]:
        assert case["flare"]["bytes_over_fp32"] > 10  # CKKS, one vector per layer
        for name in ("ours", "ours_one_process", "ours_integer_weights", "ours_unweighted"):
            assert case[name]["max_abs_error"] <= 0.1 / 255 + 1e-6  # one quantization step
            assert case[f"{name}_ratios"]["bytes_up_flare_over_ours"] > 5
            assert set(case["targets"][name]) == {
                "bytes_over_fp32",
                "encrypt_s_flare_over_ours",
                "sum_s_flare_over_ours",
                "decrypt_s_flare_over_ours",
            }
        threshold = case["ours_threshold"]  # the sum decoded by every share together
        assert threshold["max_abs_error"] <= 0.1 / 255 + 1e-6
        assert threshold["flood_bits"] > 60 and threshold["keygen_s"] > 0
        assert set(case["targets"]["ours_threshold"]) == {
            "bytes_over_fp32",
            "encrypt_s_flare_over_ours",
            "sum_s_flare_over_ours",
        }


def test_bench_e2e_quick_compares_every_protection_on_breastmnist(tmp_path):
    from fedshield.data import breastmnist_path
    from fedshield.errors import DataError

    try:
        breastmnist_path()
    except DataError:
        pytest.skip("breastmnist.npz is not available")
    _load("bench_e2e").main(["--quick", "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "e2e.json").read_text())
    cnn = doc["results"]["cnn"]
    assert set(cnn) == {"plain", "secagg", "he", "he-ckks", "randk"}
    assert cnn["plain"]["bytes_up_per_client_over_plain"] == 1.0
    assert cnn["secagg"]["bytes_up_per_client_over_plain"] < 0.4
    for mode in cnn.values():
        assert all(0.5 < auc <= 1 for auc in [*mode["auc_at"].values(), mode["final_auc"]])
    assert (tmp_path / "e2e.png").exists()


def test_bench_dp_quick_trains_each_mode_within_its_epsilon(tmp_path):
    from fedshield.data import breastmnist_path
    from fedshield.errors import DataError

    try:
        breastmnist_path()
    except DataError:
        pytest.skip("breastmnist.npz is not available")
    doc = _load("bench_dp").main(["--quick", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "dp.json").read_text())["modes"].keys() == doc["modes"].keys()
    for runs in doc["modes"].values():
        for eps, result in runs.items():
            assert result["epsilon"] <= float(eps) and 0 <= result["auc"] <= 1
    assert (tmp_path / "dp.png").exists()
