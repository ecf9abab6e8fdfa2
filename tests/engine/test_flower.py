"""fedshield over a real Flower deployment on loopback (SuperLink, SuperNodes, flwr run)."""

import json
import os

import pytest
import torch

from fedshield.cli import main
from fedshield.engine.experiment import RunConfig, build_federation
from fedshield.engine.flower.deploy import run_on_flower

pytestmark = pytest.mark.slow


def _gone(groups) -> bool:
    """No live (non-zombie) process is left in any of the deployment's process groups."""
    groups = set(groups)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgid = fields[0], int(fields[2])
        if pgid in groups and state != "Z":
            return False
    return True


def _in_process(config: RunConfig) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the site processes train with one thread too
    try:
        fed = build_federation(config)
        return [fed.run_round().as_dict() for _ in range(config.rounds)]
    finally:
        torch.set_num_threads(threads)


def test_cli_secagg_over_flower_unmasks_the_in_process_aggregate_bit_for_bit(tmp_path):
    out = tmp_path / "flower"
    args = ["run", "--transport", "flower", "--protect", "secagg", "--sites", "3"]
    assert main([*args, "--rounds", "2", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["transport"] == "flower"
    local = _in_process(RunConfig(**{**result["config"], "transport": "inprocess"}))
    for remote, mine in zip(result["rounds"], local, strict=True):
        assert remote["clients"] == [0, 1, 2] and remote["dropped"] == []
        digest = remote["protocol"]["aggregate_sha256"]
        assert digest is not None and digest == mine["protocol"]["aggregate_sha256"]
        assert remote["auc"] == pytest.approx(mine["auc"], abs=1e-9)


def test_a_supernode_killed_mid_round_is_a_recovered_dropout(tmp_path):
    config = RunConfig(protect="secagg", sites=3, rounds=1, local_epochs=1)
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
    assert _gone(seen["pids"])  # the deployment's processes are all gone


def test_he_over_flower_keys_travel_sealed_and_sites_apply_the_same_aggregate(tmp_path):
    """The key-holder site seals the HE key to the others through the grid; the server only
    adds ciphertexts; every site decrypts and applies the aggregate itself, and the model
    they evaluate is the in-process engine's."""
    config = RunConfig(protect="he", sites=2, rounds=1, local_epochs=1)
    events = []
    (row,) = run_on_flower(
        config, tmp_path / "out", on_event=lambda e, _d: events.append(e), stage_timeout=30
    )
    assert {"event": "keys"} in events
    assert row["clients"] == [0, 1] and row["protocol"]["name"] == "he"
    assert row["protocol"]["ciphertext_bytes_up"] > 0
    (mine,) = _in_process(config)
    assert row["auc"] == pytest.approx(mine["auc"], abs=1e-9)
