"""Record-level DP-SGD through Opacus inside each site's training, on tiny sites: the record
carries the epsilon the library gives for every site's steps, calibration reaches its target,
BatchNorm is replaced as Opacus requires, and both random streams come from the OS CSPRNG."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.data_loader import DPDataLoader
from torch import nn

from fedshield.engine import Federation, make_site
from fedshield.engine.dp_sgd import DPSGDTrainer, private_model
from fedshield.engine.experiment import RunConfig
from fedshield.engine.models import build_model
from fedshield.errors import ConfigError
from fedshield.privacy import epsilon


def _federation(tiny_sites, trainer: DPSGDTrainer, local_epochs: int = 1) -> Federation:
    return Federation(
        model_factory=lambda: private_model(build_model("cnn", in_channels=1)),
        sites=[make_site(s, batch_size=8, seed=i) for i, s in enumerate(tiny_sites)],
        trainer=trainer, protect="plain", local_epochs=local_epochs,
    )  # fmt: skip


def _batches(loader) -> int:
    """The steps Opacus's Poisson sampler takes per epoch over ``loader``'s data."""
    return len(DPDataLoader.from_data_loader(loader))


@pytest.mark.parametrize("local_epochs", [1, 3])
def test_the_record_carries_the_largest_epsilon_any_site_spent(tiny_sites, local_epochs):
    """Over the steps really taken: a trainer planned for one epoch in a federation that
    trains three counts three (a reviewer found the planned epochs used instead)."""
    trainer = DPSGDTrainer(clip=1.0, delta=1e-5, rounds=2, epochs=1, noise_multiplier=1.1)
    fed = _federation(tiny_sites, trainer, local_epochs)
    loaders = [runtime.site.train for runtime in fed.runtimes]
    for r in (1, 2):
        record = fed.run_round().as_dict()
        expected = max(epsilon(1.1, r * local_epochs * _batches(loader), 1e-5,
                               sampling_rate=1 / len(loader)) for loader in loaders)  # fmt: skip
        assert record["dp_mode"] == "dp-sgd" and record["epsilon"] == pytest.approx(expected)
        assert len(record["per_site_sigma_epsilon"]) == len(loaders)


def test_each_site_calibrates_its_noise_to_reach_the_target_by_the_planned_round(tiny_sites):
    trainer = DPSGDTrainer(clip=1.0, delta=1e-5, rounds=3, epochs=1, target_epsilon=4.0)
    fed = _federation(tiny_sites, trainer)
    records = [fed.run_round().as_dict() for _ in range(3)]
    assert records[0]["epsilon"] < records[-1]["epsilon"] <= 4.0
    assert records[-1]["epsilon"] >= 0.99 * 4.0


def test_batchnorm_becomes_groupnorm_and_training_leaves_no_hooks(tiny_sites):
    model = private_model(build_model("cnn", in_channels=1))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    trainer = DPSGDTrainer(clip=1.0, delta=1e-5, rounds=1, epochs=1, noise_multiplier=1.0)
    trainer.fit(model, make_site(tiny_sites[0], batch_size=8).train, 1)
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())


def test_an_empty_poisson_batch_is_a_noise_only_step(tiny_sites):
    """Two records, batches of one: a quarter of the steps sample nobody. Each is still a
    step (skipping it would leave the model unmoved with a probability the data decides)."""
    data = tiny_sites[0]
    tiny = type(data)("tiny", data.train_x[:2], data.train_y[:2], data.test_x, data.test_y)
    loader = make_site(tiny, batch_size=1).train
    trainer = DPSGDTrainer(clip=1.0, delta=1e-5, rounds=1, epochs=20, noise_multiplier=1.0)
    model = private_model(build_model("cnn", in_channels=1))
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(model, loader, 20)
    (site,) = trainer._sites.values()
    assert site.steps == 20 * _batches(loader)
    moved = [not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)]
    assert all(moved) and all(torch.isfinite(p).all() for p in model.parameters())


def _train_once(tiny_sites, seed_bits=None, monkeypatch=None) -> np.ndarray:
    if monkeypatch is not None:
        from fedshield.engine import dp_sgd

        monkeypatch.setattr(dp_sgd.secrets, "randbits", lambda bits: seed_bits)
    torch.manual_seed(0)
    model = private_model(build_model("cnn", in_channels=1))
    site = make_site(tiny_sites[0], batch_size=8, seed=0)
    trainer = DPSGDTrainer(clip=1.0, delta=1e-5, rounds=1, epochs=1, noise_multiplier=1.0)
    trainer.fit(model, site.train, 1)
    return torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()


def test_batches_and_noise_come_from_the_os_csprng_not_the_seed(tiny_sites, monkeypatch):
    """Same torch seed, same data: two trainings differ; pinning the CSPRNG (only) makes them
    equal, so it is the one source of both random streams."""
    assert not np.array_equal(_train_once(tiny_sites), _train_once(tiny_sites))
    pinned = [_train_once(tiny_sites, 7, monkeypatch) for _ in range(2)]
    np.testing.assert_array_equal(*pinned)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"dp_sgd": True}, "exactly one of --dp-epsilon and --dp-noise"),
     ({"dp_sgd": True, "dp_noise": 1.0, "dp_mode": "central"}, "choose one"),
     ({"dp_sgd": True, "dp_noise": 1.0, "algorithm": "fedbn"}, "fedbn keeps BatchNorm"),
     ({"dp_sgd": True, "dp_noise": -1.0}, "--dp-noise >= 0"),
     ({"dp_sgd": True, "dp_noise": 1.0, "dp_delta": 2.0}, "--dp-delta in"),
     ({"dp_sgd": True, "dp_epsilon": float("inf")}, "--dp-epsilon must be a finite")],
)  # fmt: skip
def test_option_sets_dp_sgd_cannot_train_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**options)
