"""``fedshield run --site-data``: the in-process engine on each site's own folder (one data
spec per site), and a site runtime that reads its own spec and folder alone."""

from __future__ import annotations

import json

import pytest
from image_folders import png_site, write_spec

from fedshield.cli import main
from fedshield.engine.experiment import RunConfig, build_site_runtime, with_data_facts
from fedshield.errors import ConfigError

CLASSES = ["benign", "malignant"]


def _specs(tmp_path, n: int = 2) -> list[str]:
    specs = []
    for s in range(n):
        png_site(tmp_path / f"h{s}", [0, 1] * (5 + s))
        spec = write_spec(
            tmp_path / f"h{s}.yaml", root=f"h{s}", classes=CLASSES, size=[28, 28],
            name=f"hospital-{s}", cache="cache",
        )  # fmt: skip
        specs.append(str(spec))
    return specs


def test_run_trains_on_the_sites_own_folders_and_writes_the_result(tmp_path):
    specs = _specs(tmp_path)
    out = tmp_path / "run"
    args = ["run", "--site-data", *specs, "--rounds", "1", "--local-epochs", "1"]
    assert main([*args, "--protect", "plain", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    config = result["config"]
    assert config["site_data"] == specs and config["sites"] == 2
    assert config["dataset"] == "site-data" and config["model"] == "cnn"
    assert set(result["final"]["per_site"]) == {"hospital-0", "hospital-1"}
    assert [s["n"] for s in result["final"]["per_site"].values()] == [2, 2]
    assert len(result["rounds"]) == 1 and result["rounds"][0]["clients"] == [0, 1]


def test_the_run_facts_come_from_the_specs(tmp_path):
    config = with_data_facts(RunConfig(site_data=_specs(tmp_path), sites=2))
    assert (config.classes, config.in_channels, config.max_weight) == (2, 1, 10.0)


def test_a_site_runtime_reads_only_its_own_spec_and_folder(tmp_path):
    """Site 1's spec does not exist: site 0's runtime never needs it."""
    (spec,) = _specs(tmp_path, 1)
    config = RunConfig(site_data=[spec, str(tmp_path / "absent.yaml")], sites=2, max_weight=10.0)
    runtime = build_site_runtime(config, 0)
    assert runtime.site.name == "hospital-0" and runtime.site.weight == 8
    with pytest.raises(ConfigError, match=r"absent\.yaml: cannot read it"):
        build_site_runtime(config, 1)


def test_site_data_options_that_contradict_each_other_are_refused(tmp_path, capsys):
    specs = _specs(tmp_path)
    with pytest.raises(ConfigError, match="2 spec\\(s\\) but --sites is 3"):
        RunConfig(site_data=specs, sites=3)
    with pytest.raises(ConfigError, match="--site-data or --dataset breastmnist, not both"):
        RunConfig(site_data=specs, sites=2, dataset="breastmnist")
    with pytest.raises(ConfigError, match="one data spec per site"):
        RunConfig(site_data=[], sites=2)
    assert main(["run", "--site-data", *specs, "--sites", "3", "--out", str(tmp_path)]) == 2
    assert "leave --sites out" in capsys.readouterr().out


def test_roster_enrol_counts_the_sites_and_their_weights_from_the_specs(tmp_path):
    specs = _specs(tmp_path)
    assert main(["roster", "enrol", "--site-data", *specs, "--out", str(tmp_path / "e")]) == 0
    roster = json.loads((tmp_path / "e" / "roster.json").read_text())
    assert sorted(p.name for p in (tmp_path / "e").glob("site*.identity")) == [
        "site0.identity",
        "site1.identity",
    ]
    assert sorted(roster["members"]) == ["0", "1"]
    assert roster["parameters"]["max_weight"] == 10.0  # the largest site's 10 training images
