"""Site-level DP-FedAvg in the engine, on tiny sites: what leaves each site is clipped, the
record reports the epsilon the library computes, and bad option sets are refused before any
training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedshield.cli import main
from fedshield.engine import Federation, make_site
from fedshield.engine.experiment import RunConfig
from fedshield.engine.models import SmallCNN
from fedshield.engine.site import SiteRuntime
from fedshield.errors import ConfigError
from fedshield.privacy import DPConfig, epsilon


def _federation(tiny_sites, mode: str, protect: str = "plain") -> Federation:
    config = DPConfig(mode=mode, clip=0.05, noise_multiplier=0.7, delta=1e-5, rounds=2,
                      sites=len(tiny_sites))  # fmt: skip
    return Federation(
        model_factory=lambda: SmallCNN(width=4), protect=protect, privacy=config,
        sites=[make_site(s, batch_size=8, seed=i) for i, s in enumerate(tiny_sites)],
    )  # fmt: skip


@pytest.mark.parametrize(("mode", "protect"), [("central", "plain"), ("central", "secagg"),
                                               ("local", "secagg")])  # fmt: skip
def test_what_leaves_each_site_is_clipped_and_weighed_one(tiny_sites, monkeypatch, mode, protect):
    sent = []
    train_from = SiteRuntime.train_from

    def spy(self, *args, **kwargs):
        session = train_from(self, *args, **kwargs)
        sent.append((np.linalg.norm(session.update.astype(np.float64)), session.weight))
        return session

    monkeypatch.setattr(SiteRuntime, "train_from", spy)
    fed = _federation(tiny_sites, mode, protect)
    record = fed.run_round()
    assert record.aborted is None and len(sent) == len(tiny_sites)
    for norm, weight in sent:
        assert weight == 1.0
        assert (norm <= 0.05) if mode == "central" else (norm > 0.05)  # local: noised after


def test_each_round_records_the_epsilon_the_library_gives(tiny_sites):
    fed = _federation(tiny_sites, "central")
    records = [fed.run_round().as_dict() for _ in range(2)]
    for r, record in enumerate(records, start=1):
        assert record["dp_mode"] == "central" and record["clip"] == 0.05
        assert record["noise_multiplier"] == 0.7 and record["delta"] == 1e-5
        assert record["epsilon"] == pytest.approx(epsilon(0.7, r, 1e-5))


@pytest.mark.parametrize(
    ("options", "message"),
    [({"dp_epsilon": 8.0}, "need --dp-mode"),
     ({"dp_mode": "central"}, "exactly one of --dp-epsilon and --dp-noise"),
     ({"dp_mode": "central", "dp_noise": 1.0, "dp_epsilon": 8.0}, "exactly one"),
     ({"dp_mode": "central", "dp_noise": 1.0, "protect": "he"}, "under he use --dp-mode local"),
     ({"dp_mode": "local", "dp_noise": 1.0, "dp_clip": -1.0}, "--dp-clip must be positive"),
     ({"dp_mode": "local", "dp_epsilon": 1e-9}, "no noise multiplier up to 1000")],
)  # fmt: skip
def test_bad_option_sets_are_refused_naming_the_option(options, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**options)


def test_the_cli_trains_under_dp_and_the_final_epsilon_is_within_the_target(tmp_path):
    out = tmp_path / "run"
    code = main(["run", "--rounds", "2", "--sites", "3", "--dp-mode", "local",
                 "--dp-epsilon", "8", "--out", str(out)])  # fmt: skip
    assert code == 0
    rounds = json.loads((out / "result.json").read_text())["rounds"]
    assert [r["dp_mode"] for r in rounds] == ["local", "local"]
    assert rounds[0]["epsilon"] < rounds[-1]["epsilon"] <= 8.0
    assert rounds[-1]["epsilon"] == pytest.approx(8.0, rel=0.01)
    report = (out / "report.md").read_text()
    assert "## Differential privacy" in report and f"| 2 | {rounds[-1]['epsilon']:.3f} |" in report
