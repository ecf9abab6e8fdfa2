"""Site-level DP-FedAvg in the engine, on tiny sites: what leaves each site is clipped, the
record reports the epsilon the library computes, and bad option sets are refused before any
training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedshield.cli import main
from fedshield.crypto.ddg import DiscreteGaussianEncoding
from fedshield.engine import Federation, make_site
from fedshield.engine.experiment import RunConfig
from fedshield.engine.models import SmallCNN
from fedshield.engine.site import SiteRuntime
from fedshield.errors import ConfigError
from fedshield.privacy import DPConfig, SiteLevelDP, clip_l2, epsilon


def _federation(tiny_sites, mode: str, protect: str = "plain") -> Federation:
    config = DPConfig(mode=mode, clip=0.05, noise_multiplier=0.7, delta=1e-5, rounds=2,
                      sites=len(tiny_sites))  # fmt: skip
    return Federation(
        model_factory=lambda: SmallCNN(width=4), protect=protect, privacy=config,
        sites=[make_site(s, batch_size=8, seed=i) for i, s in enumerate(tiny_sites)],
    )  # fmt: skip


def test_what_leaves_each_site_under_central_is_clipped_and_weighed_one(tiny_sites, monkeypatch):
    """Measured on what the server decodes of each site (plain float32: exactly the update)."""
    sessions = []
    train_from = SiteRuntime.train_from

    def spy(self, *args, **kwargs):
        sessions.append(train_from(self, *args, **kwargs))
        return sessions[-1]

    monkeypatch.setattr(SiteRuntime, "train_from", spy)
    record = _federation(tiny_sites, "central").run_round()
    assert record.aborted is None and len(sessions) == len(tiny_sites)
    for session in sessions:
        assert session.weight == 1.0
        assert np.linalg.norm(session.sent.astype(np.float64)) <= 0.05


def test_local_mode_sends_the_clipped_update_plus_noise_of_the_planned_spread(
    tiny_sites, monkeypatch
):
    pairs = []
    at_site = SiteLevelDP.at_site

    def spy(self, update):
        pairs.append((update, at_site(self, update)))
        return pairs[-1][1]

    monkeypatch.setattr(SiteLevelDP, "at_site", spy)
    _federation(tiny_sites, "local", "secagg").run_round()
    for update, sent in pairs:
        noise = sent.astype(np.float64) - clip_l2(update, 0.05)
        assert np.std(noise) == pytest.approx(0.7 * 0.05, rel=0.1)


@pytest.mark.parametrize("protect", ["secagg", "he"])
def test_distributed_mode_sends_rounded_updates_within_the_clip(tiny_sites, monkeypatch, protect):
    """What leaves each site before the noise, the rounded vector, has L2 norm at most the
    clip (``B`` integer units); the sum holds every site."""
    rounded = []
    original = DiscreteGaussianEncoding.rounded

    def spy(self, scaled, rng):
        vector = original(self, scaled, rng)
        rounded.append((vector.copy(), self))  # encode then adds the noise in place
        return vector

    monkeypatch.setattr(DiscreteGaussianEncoding, "rounded", spy)
    fed = _federation(tiny_sites, "distributed", protect)
    record = fed.run_round().as_dict()
    assert record["aborted"] is None and len(record["clients"]) == len(tiny_sites)
    assert record["dp_mode"] == "distributed" and record["epsilon"] == epsilon(0.7, 1, 1e-5)
    assert record["dp_encoding"]["min_sites"] == len(tiny_sites) // 2 + 1
    assert len(rounded) == len(tiny_sites)
    for vector, encoding in rounded:
        assert np.linalg.norm(vector) / encoding.scale <= 0.05


def test_each_round_records_the_epsilon_the_library_gives(tiny_sites):
    fed = _federation(tiny_sites, "central")
    records = [fed.run_round().as_dict() for _ in range(2)]
    for r, record in enumerate(records, start=1):
        assert record["dp_mode"] == "central" and record["clip"] == 0.05
        assert record["noise_multiplier"] == 0.7 and record["delta"] == 1e-5
        assert record["epsilon"] == pytest.approx(epsilon(0.7, r, 1e-5))


@pytest.mark.parametrize(
    ("options", "message"),
    [({"dp_epsilon": 8.0}, "need --dp-mode or --dp-sgd"),
     ({"dp_clip": 0.5}, "--dp-clip need --dp-mode"),
     ({"dp_mode": "central"}, "exactly one of --dp-epsilon and --dp-noise"),
     ({"dp_mode": "central", "dp_noise": 1.0, "dp_epsilon": 8.0}, "exactly one"),
     ({"dp_mode": "central", "dp_noise": 1.0}, "quantizing protection \\(secagg"),
     ({"dp_mode": "central", "dp_noise": 1.0, "protect": "he"}, "or --dp-mode local"),
     ({"dp_mode": "central", "dp_noise": 1.0, "protect": "plain", "quant_bits": 8}, "8-bit"),
     ({"dp_mode": "central", "dp_noise": 1.0, "protect": "plain", "error_feedback": True},
      "drop --error-feedback"),
     ({"dp_mode": "local", "dp_noise": float("nan")}, "--dp-noise must be a finite"),
     ({"dp_mode": "local", "dp_noise": 1.0, "dp_clip": -1.0}, "--dp-clip must be positive"),
     ({"dp_mode": "local", "dp_epsilon": 1e-9}, "no noise multiplier up to 1000"),
     ({"dp_mode": "distributed", "dp_noise": 1.0, "protect": "plain"}, "--protect secagg"),
     ({"dp_mode": "distributed", "dp_noise": 1.0, "protect": "he", "he_scheme": "ckks"},
      "got he/ckks"),
     ({"dp_mode": "distributed", "dp_noise": 1.0, "clip": 0.1}, "drop --clip")],
)  # fmt: skip
def test_bad_option_sets_are_refused_naming_the_option(options, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**options)


@pytest.mark.parametrize("mode", ["local", "distributed"])
def test_the_cli_trains_under_dp_and_the_final_epsilon_is_within_the_target(tmp_path, mode):
    out = tmp_path / "run"
    code = main(["run", "--rounds", "2", "--sites", "3", "--dp-mode", mode,
                 "--dp-epsilon", "8", "--out", str(out)])  # fmt: skip
    assert code == 0
    rounds = json.loads((out / "result.json").read_text())["rounds"]
    assert [r["dp_mode"] for r in rounds] == [mode, mode]
    assert all(r["aborted"] is None and len(r["clients"]) == 3 for r in rounds)
    assert rounds[0]["epsilon"] < rounds[-1]["epsilon"] <= 8.0
    assert rounds[-1]["epsilon"] == pytest.approx(8.0, rel=0.01)
    report = (out / "report.md").read_text()
    assert "## Differential privacy" in report and f"| 2 | {rounds[-1]['epsilon']:.3f} |" in report
