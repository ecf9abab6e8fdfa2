"""End-to-end accuracy claims on real images (``make acceptance``).

Every training is a ``fedshield run`` of its own in a fresh process, run once and cached on
disk (``tests/run_cache.py``): test order, xdist workers and earlier tests cannot move a number.
A run is then bit-for-bit reproducible on one machine; on another CPU (other oneDNN kernels)
its numbers move like a change of seed, so every tolerance below is sized from the seed-to-seed
spread. BreastMNIST, 4 IID sites, 10 rounds, 1 thread, seeds 0-4 (pooled test AUC):

| run                            | final | gap to fp32: mean ± sd, worst | gap at round 5 |
|--------------------------------|-------|-------------------------------|----------------|
| plain fp32                     | 0.8730|                               | (AUC 0.8226)   |
| secagg 8-bit (default)         | 0.8722| -0.0008 ± 0.0025, -0.0029     | +0.0017        |
| he (BFV 8-bit, default)        | 0.8722| -0.0008 ± 0.0025, -0.0029     | +0.0017        |
| secagg 8-bit, integer weights  | 0.8717| -0.0013 ± 0.0030, -0.0048     | +0.0017        |
| plain 8-bit + EF (per chunk)   | 0.8722| -0.0008 ± 0.0019, -0.0036     | +0.0018        |
| secagg 8-bit, --clip 0.1       | 0.7581| -0.1149 ± 0.0263, -0.1485     | -0.1628        |
| rand-k 10% + EF (under secagg) | 0.8670| -0.0058 ± 0.0071, -0.0140     | +0.0098        |
| ... --train-all-coordinates    | 0.8095| -0.0633 ± 0.0289, -0.1029     | -0.0405        |

(secagg's default fraction weighting quantizes exactly as ``he``'s does: the same numbers.
The fixed range was the default before adaptive ranges; issue 13 measured it.) The issue's
bounds (mean at least fp32's minus 0.01, no seed more than 0.03 below its twin, round-5 mean
within 0.03) leave the protected runs 4 paired standard deviations of room. Rand-k's sites
train only the round's kept coordinates (subspace training); the classic way, training every
coordinate and letting error feedback carry the rest, stalls near 0.80 (the last row).
Seeds 0-9: subspace rand-k -0.005 ± 0.006 (worst -0.014).
"""

import json

import numpy as np
import pytest
from run_cache import cached_run, final_auc, has_breastmnist, mean_upload

from fedshield.cli import main

SEEDS = range(5)
MATCH_TOLERANCE = 0.01  # the bound on the mean gap (see the module docstring)
SEED_TOLERANCE = 0.03  # ... on any one seed, and on the mean at round 5
BREASTMNIST = dict(dataset="breastmnist", sites=4, rounds=10)
FP32 = dict(protect="plain")
Q8_EF = dict(protect="plain", quant_bits=8, error_feedback=True)
RANDK = dict(protect="secagg", quant_bits=8, sparsify="randk:0.1", error_feedback=True)
SECAGG = dict(protect="secagg", quant_bits=8)  # the default protection
HE = dict(protect="he", quant_bits=8)  # BFV, fraction weighting


needs_breastmnist = pytest.mark.skipif(
    not has_breastmnist(), reason="breastmnist.npz not available"
)


def _aucs(options: dict, round: int | None = None) -> np.ndarray:
    if round is None:
        return np.array([final_auc(**BREASTMNIST, **options, seed=s) for s in SEEDS])
    runs = [cached_run(**BREASTMNIST, **options, seed=s) for s in SEEDS]
    return np.array([r["rounds"][round - 1]["auc"] for r in runs])


def _mean_gap_to_fp32(options: dict) -> float:
    gaps = _aucs(options) - _aucs(FP32)
    print(f"{options}: AUC gap to fp32 per seed {np.round(gaps, 4).tolist()}")
    return float(gaps.mean())


def _check_trains_as_well_as_fp32(options: dict) -> None:
    """The issue's acceptance: final mean within 0.01 of fp32's, no seed more than 0.03 below
    its fp32 twin, and the mean at round 5 within 0.03."""
    gaps = _aucs(options) - _aucs(FP32)
    at_five = _aucs(options, round=5).mean() - _aucs(FP32, round=5).mean()
    print(f"{options}: final gap per seed {np.round(gaps, 4).tolist()}, round 5 {at_five:+.4f}")
    assert gaps.mean() >= -MATCH_TOLERANCE
    assert gaps.min() >= -SEED_TOLERANCE
    assert abs(at_five) <= SEED_TOLERANCE


@pytest.mark.slow
@needs_breastmnist
def test_breastmnist_fedavg_four_sites_reaches_auc_085_over_seeds():
    aucs = _aucs(SECAGG)
    print("BreastMNIST pooled test AUC per seed (secagg):", aucs)
    assert aucs.mean() >= 0.85  # measured 0.8722 (seeds: 0.859-0.885)


@pytest.mark.slow
@needs_breastmnist
def test_secagg_8bit_trains_as_well_as_plain_round_for_round():
    _check_trains_as_well_as_fp32(SECAGG)


@pytest.mark.slow
@needs_breastmnist
def test_default_secagg_sends_at_most_035x_the_fp32_bytes():
    """Fraction weighting: a 10-bit ring at n = 4; with the range statistic 0.328x (was 0.58x)."""
    secagg, fp32 = (
        mean_upload(**BREASTMNIST, **SECAGG, seed=0),
        mean_upload(**BREASTMNIST, **FP32, seed=0),
    )
    print(f"uplink per client per round: secagg {secagg:.0f} B, fp32 {fp32:.0f} B")
    assert secagg <= 0.35 * fp32


@pytest.mark.slow
@needs_breastmnist
def test_he_trains_as_well_as_plain_round_for_round():
    _check_trains_as_well_as_fp32(HE)


@pytest.mark.slow
@needs_breastmnist
def test_threshold_he_trains_as_shared_key_he_with_the_same_seed():
    """Issue 16: the same seed, the same quantization draws, so the same decoded sums: the
    threshold run must be within 0.01 AUC of the shared-key one (measured: equal)."""
    threshold = cached_run(**BREASTMNIST, **HE, he_keys="threshold", seed=0)
    shared = cached_run(**BREASTMNIST, **HE, seed=0)
    gaps = [t["auc"] - s["auc"] for t, s in zip(threshold["rounds"], shared["rounds"], strict=True)]
    print(f"threshold - shared AUC per round: {np.round(gaps, 4).tolist()}")
    assert abs(gaps[-1]) <= MATCH_TOLERANCE
    assert max(abs(g) for g in gaps) <= MATCH_TOLERANCE


@pytest.mark.slow
@needs_breastmnist
def test_8bit_error_feedback_tracks_fp32_at_under_a_third_of_the_bytes():
    assert abs(_mean_gap_to_fp32(Q8_EF)) <= MATCH_TOLERANCE
    assert mean_upload(**BREASTMNIST, **Q8_EF, seed=0) < 0.3 * mean_upload(
        **BREASTMNIST, **FP32, seed=0
    )


@pytest.mark.slow
@needs_breastmnist
def test_randk_at_a_tenth_of_the_values_tracks_fp32_round_for_round():
    """The issue's bound: the mean within 0.03 of fp32's at round 10 (measured -0.006), and at
    round 5 (+0.010); the uplink is 0.057x fp32's (a tenth of the values on secagg's ring)."""
    assert _mean_gap_to_fp32(RANDK) >= -SEED_TOLERANCE
    at_five = _aucs(RANDK, round=5).mean() - _aucs(FP32, round=5).mean()
    assert abs(at_five) <= SEED_TOLERANCE
    assert mean_upload(**BREASTMNIST, **RANDK, seed=0) < 0.07 * mean_upload(
        **BREASTMNIST, **FP32, seed=0
    )


@pytest.mark.slow
def test_survey_on_synthetic_shows_the_qualitative_finding():
    summary = cached_run("experiment survey", seeds=3)["summary"]
    acc = {s: summary[s]["accuracy"]["mean"] for s in summary}
    auc = {s: summary[s]["auc"]["mean"] for s in summary}
    print("accuracy", acc, "\nAUC", auc)
    # Cross is clearly worse than Single (measured: accuracy 0.598 vs 0.667, AUC 0.897 vs 0.945)
    assert acc["Cross"] < acc["Single"] - 0.03 and auc["Cross"] < auc["Single"] - 0.02
    # ... and FedAvg is at least as good as Single (measured: 0.826 and 0.952).
    assert acc["FedAvg"] >= acc["Single"] and auc["FedAvg"] >= auc["Single"] - 0.005


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [["--dataset", "breastmnist", "--sites", "4", "--dp-sgd", "--dp-epsilon", "8"],
     ["--dp-mode", "distributed", "--dp-epsilon", "8"]],
    ids=["dp-sgd-breastmnist", "distributed-synthetic"],
)  # fmt: skip
def test_the_dp_commands_train_and_report_epsilon_per_round(tmp_path, args):
    """The issue's two commands, as a user types them: every round reports its epsilon, which
    grows to at most the target after the last (the planned) round."""
    if "breastmnist" in args and not has_breastmnist():
        pytest.skip("breastmnist.npz not available")
    assert main(["run", *args, "--out", str(tmp_path)]) == 0
    rounds = json.loads((tmp_path / "result.json").read_text())["rounds"]
    spent = [r["epsilon"] for r in rounds]
    assert len(rounds) == 5 and all(r["aborted"] is None for r in rounds)
    assert spent[0] > 0 and spent == sorted(spent) and spent[-1] <= 8.0
    if "--dp-sgd" in args:  # record-level DP keeps most of the signal (plain: about 0.84)
        assert rounds[-1]["auc"] > 0.6
