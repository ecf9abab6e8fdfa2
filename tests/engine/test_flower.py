"""fedshield over a real Flower deployment on loopback (SuperLink, SuperNodes, flwr run)."""

import json

import pytest
from in_process import in_process

from fedshield.cli import main
from fedshield.engine.experiment import RunConfig
from fedshield.engine.flower.deploy import live_members, run_on_flower

pytestmark = pytest.mark.flower


def test_cli_secagg_over_flower_unmasks_the_in_process_aggregate_bit_for_bit(tmp_path):
    out = tmp_path / "flower"
    args = ["run", "--transport", "flower", "--protect", "secagg", "--sites", "3"]
    assert main([*args, "--rounds", "2", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["transport"] == "flower"
    local = in_process(RunConfig(**result["config"]))
    for remote, mine in zip(result["rounds"], local, strict=True):
        assert remote["clients"] == [0, 1, 2] and remote["dropped"] == []
        digest = remote["protocol"]["aggregate_sha256"]
        assert digest is not None and digest == mine["protocol"]["aggregate_sha256"]
        assert remote["auc"] == pytest.approx(mine["auc"], abs=1e-9)
        assert remote["model_sha256"] == mine["model_sha256"]  # the same global model, bits
    assert result["reproducibility"]["final_model_sha256"] == local[-1]["model_sha256"]


def test_a_supernode_killed_mid_round_is_a_recovered_dropout(tmp_path):
    """Three sites tolerate a dropout after ``share_keys`` when the server may collude with
    none of them (the default, one colluder, needs all three to sign the survivor set)."""
    config = RunConfig(protect="secagg", sites=3, rounds=1, local_epochs=1, colluders=0)
    seen = {}

    def kill_site_2(event, deployment):
        seen["pids"] = deployment.pids()
        if event.get("stage") == "masked_input":
            deployment.kill_site(2)  # site 2's shares are out: recovery must rebuild its key
            seen["killed"] = True

    (row,) = run_on_flower(config, tmp_path / "out", on_event=kill_site_2, stage_timeout=15)
    assert seen.get("killed")
    assert row["aborted"] is None
    assert row["clients"] == [0, 1] and row["dropped"] == [2]
    stages = {s["stage"]: s for s in row["stages"]}
    assert 2 in stages["masked_input"]["dropped"]
    assert row["protocol"]["aggregate_sha256"] is not None
    assert live_members(seen["pids"]) == []  # the deployment's processes are all gone


@pytest.mark.parametrize("keys", ["shared", "threshold"])
def test_he_over_flower_keys_travel_sealed_and_sites_apply_the_same_aggregate(tmp_path, keys):
    """The key-holder site seals the HE key to the others through the grid (threshold keys:
    the sites make the collective key there); the server only adds ciphertexts; every site
    decrypts and applies the aggregate itself, and the model they evaluate is the in-process
    engine's."""
    config = RunConfig(protect="he", he_keys=keys, sites=2, rounds=1, local_epochs=1)
    events = []
    (row,) = run_on_flower(
        config, tmp_path / "out", on_event=lambda e, _d: events.append(e), stage_timeout=30
    )
    assert {"event": "keys"} in events
    assert row["clients"] == [0, 1] and row["protocol"]["name"] == "he"
    assert row["protocol"]["ciphertext_bytes_up"] > 0
    (mine,) = in_process(config)
    assert row["auc"] == pytest.approx(mine["auc"], abs=1e-9)
    # The sites decrypted the summed counts and reported them: the in-process engine's numbers.
    assert row["pooled"] == mine["pooled"] == "summed under he"
    assert row["pooled_sites"] == mine["pooled_sites"] and len(row["pooled_sites"]) == 2
    # The server never holds the model under he; the sites report theirs, the in-process one.
    assert row["model_sha256"] == mine["model_sha256"] is not None


def test_distributed_dp_over_flower_reports_its_epsilon(tmp_path):
    """Each site process adds its share of the noise inside SecAgg+; the server's record
    carries the encoding and the epsilon spent."""
    config = RunConfig(protect="secagg", sites=3, rounds=1, local_epochs=1,
                       dp_mode="distributed", dp_noise=1.0)  # fmt: skip
    (row,) = run_on_flower(config, tmp_path / "out", stage_timeout=30)
    assert row["aborted"] is None and row["clients"] == [0, 1, 2]
    assert row["dp_mode"] == "distributed" and row["dp_encoding"]["min_sites"] == 2
    assert 0 < row["epsilon"] < float("inf") and row["noise_multiplier"] == 1.0


def test_dp_sgd_over_flower_reports_the_sites_epsilon(tmp_path):
    """Each site's DP-SGD spending travels with its evaluation; the server records the
    largest, as the in-process engine does."""
    config = RunConfig(protect="secagg", sites=2, rounds=1, local_epochs=1, dp_sgd=True,
                       dp_noise=1.0)  # fmt: skip
    (row,) = run_on_flower(config, tmp_path / "out", stage_timeout=30)
    assert row["aborted"] is None and row["dp_mode"] == "dp-sgd"
    assert len(row["per_site_sigma_epsilon"]) == 2
    assert row["epsilon"] == max(eps for _sigma, eps in row["per_site_sigma_epsilon"]) > 0
