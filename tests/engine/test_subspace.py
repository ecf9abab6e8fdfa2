"""Rand-k's subspace training: a site moves only the round's kept coordinates, at a scaled
learning rate, so its update loses nothing to sparsification."""

import numpy as np
import pytest
import torch

from fedshield.engine import Federation, LocalTrainer, make_site
from fedshield.engine.compression import Compression, UpdateCompressor
from fedshield.engine.dp_sgd import DPSGDTrainer, private_model
from fedshield.engine.experiment import RunConfig
from fedshield.engine.models import SmallCNN, build_model
from fedshield.engine.paramspec import ParamSpec
from fedshield.engine.subspace import Subspace
from fedshield.engine.trainer import Algorithm
from fedshield.errors import ConfigError


def _round_subspace(model, fraction=0.1, round=1, train_all=False):
    spec = ParamSpec.from_module(model)
    compressor = UpdateCompressor(
        Compression("randk", fraction, train_all=train_all), dim=spec.dim, seed=5,
        n_trainable=spec.n_trainable,
    )  # fmt: skip
    return spec, compressor, compressor.training_subspace(round)


FEDAVG = Algorithm()


def _local_delta(trainer, loader, algorithm=FEDAVG, model=None, epochs=2):
    """(spec, kept trainable indices, lr scale, delta of a local update in the subspace)."""
    torch.manual_seed(0)
    model = model or SmallCNN(width=4)
    spec, _, (kept, scale) = _round_subspace(model)
    start = spec.flatten(model)
    subspace = Subspace.of_round(spec, kept, scale)
    trainer.local_update(algorithm, model, loader, epochs, subspace=subspace)
    return spec, kept, scale, spec.flatten(model) - start


def test_the_masks_are_the_rounds_kept_coordinates_tensor_by_tensor():
    spec, compressor, (kept, scale) = _round_subspace(SmallCNN(width=4), 0.1, round=3)
    masks = Subspace.of_round(spec, kept, scale).masks
    flags = np.concatenate([masks[e.name].numpy().ravel() for e in spec.entries if e.trainable])
    np.testing.assert_array_equal(np.flatnonzero(flags), kept)
    assert set(kept) <= set(compressor.shared_indices(3).tolist())
    assert scale == spec.n_trainable / compressor.k_trainable  # about 1 / 0.1


@pytest.mark.parametrize(
    "factory",
    [lambda p: torch.optim.Adam(p, lr=1e-3),
     lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.5),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.1)],
    ids=["adam", "adamw-decay", "sgd-momentum-decay"],
)  # fmt: skip
def test_only_the_kept_coordinates_move_whatever_the_optimizer(tiny_sites, factory):
    loader = make_site(tiny_sites[0], batch_size=8, seed=0).train
    spec, kept, _, delta = _local_delta(LocalTrainer(optimizer_factory=factory), loader)
    trainable = delta[: spec.n_trainable]
    outside = np.setdiff1d(np.arange(spec.n_trainable), kept)
    np.testing.assert_array_equal(trainable[outside], 0.0)  # weight decay cannot move them
    assert np.count_nonzero(trainable[kept]) > 0.9 * kept.size
    assert np.count_nonzero(delta[spec.n_trainable :]) > 0  # BatchNorm statistics: measured


def test_fedprox_and_dp_sgd_keep_to_the_subspace_too(tiny_sites):
    loader = make_site(tiny_sites[0], batch_size=8, seed=0).train
    prox = Algorithm("fedprox", mu=0.1)
    spec, kept, _, delta = _local_delta(LocalTrainer(), loader, prox)
    outside = np.setdiff1d(np.arange(spec.n_trainable), kept)
    np.testing.assert_array_equal(delta[outside], 0.0)
    dp = DPSGDTrainer(clip=1.0, delta=1e-5, rounds=1, epochs=2, noise_multiplier=1.0)
    model = private_model(build_model("cnn", in_channels=1))
    spec, kept, _, delta = _local_delta(dp, loader, model=model)
    outside = np.setdiff1d(np.arange(spec.n_trainable), kept)
    np.testing.assert_array_equal(delta[outside], 0.0)  # Opacus's noise there is dropped
    assert np.count_nonzero(delta[kept]) > 0.9 * kept.size


def test_the_kept_coordinates_step_lr_scale_times_as_far(tiny_sites):
    """One plain SGD step: the gradient is the same with or without the subspace, so the kept
    coordinates move exactly ``lr_scale`` times as far as in dense training."""
    loader = torch.utils.data.DataLoader(
        make_site(tiny_sites[0], batch_size=64, seed=0).train.dataset, batch_size=64
    )
    trainer = LocalTrainer(optimizer_factory=lambda p: torch.optim.SGD(p, lr=0.01))
    spec, kept, scale, delta = _local_delta(trainer, loader, epochs=1)
    torch.manual_seed(0)
    model = SmallCNN(width=4)
    start = spec.flatten(model)
    trainer.local_update(Algorithm(), model, loader, 1)
    dense = spec.flatten(model) - start
    assert scale > 9
    np.testing.assert_allclose(
        delta[kept], scale * dense[kept], rtol=1e-4, atol=1e-6
    )  # float32 rounding


def _federation(tiny_sites, compression, protect="plain", **kwargs):
    sites = [make_site(s, batch_size=8, seed=i) for i, s in enumerate(tiny_sites)]
    return Federation(
        model_factory=lambda: SmallCNN(width=4), sites=sites, protect=protect,
        compression=compression, seed=3, **kwargs,
    )  # fmt: skip


def test_nothing_is_dropped_so_float32_rand_k_leaves_no_residual(tiny_sites):
    subspace = _federation(tiny_sites, Compression("randk", 0.1, error_feedback=True))
    subspace.run_round()
    for runtime in subspace.runtimes:
        np.testing.assert_array_equal(runtime.compressor.feedback.residual, 0.0)
    classic = Compression("randk", 0.1, error_feedback=True, train_all=True)
    dense = _federation(tiny_sites, classic)
    dense.run_round()
    residual = dense.runtimes[0].compressor.feedback.residual
    assert np.count_nonzero(residual) > 0.5 * dense.spec.n_trainable  # the classic way drops


def test_the_secure_sum_moves_only_the_kept_coordinates_and_the_record_says_how(tiny_sites):
    fed = _federation(tiny_sites, Compression("randk", 0.1), protect="secagg")
    start = fed.global_vector.copy()
    kept = fed.server.model.compressor.training_subspace(1)[0]
    record = fed.run_round()
    moved = np.flatnonzero(
        fed.global_vector[: fed.spec.n_trainable] != start[: fed.spec.n_trainable]
    )
    assert set(moved) <= set(kept.tolist()) and len(moved) > 0.5 * len(kept)
    assert record.protocol["local_training"] == "kept coordinates"


def test_fedsgd_sends_its_gradient_the_classic_way_and_says_so(tiny_sites):
    fed = _federation(tiny_sites, Compression("randk", 0.1, error_feedback=True),
                      algorithm=Algorithm("fedsgd"))  # fmt: skip
    record = fed.run_round()
    assert np.count_nonzero(fed.runtimes[0].compressor.feedback.residual) > 0
    assert record.protocol["local_training"] == "all coordinates"
    config = RunConfig(protect="plain", sparsify="randk:0.1", algorithm="fedsgd")
    assert config.compression().train_all  # what a deployed site and server build
    with pytest.raises(ConfigError, match="no subspace training"):
        spec, _, kept = _round_subspace(SmallCNN(width=4))
        LocalTrainer().local_update(Algorithm("fedsgd"), SmallCNN(width=4), None, 1,
                                    subspace=Subspace.of_round(spec, *kept))  # fmt: skip


def test_a_loop_fedshield_does_not_own_is_refused_with_the_way_out(tiny_sites):
    def train_fn(model, loader, epochs):
        return {}

    own = LocalTrainer(train_fn=train_fn)
    with pytest.raises(ConfigError, match="--train-all-coordinates"):
        _federation(tiny_sites, Compression("randk", 0.1), trainer=own)
    fed = _federation(tiny_sites, Compression("randk", 0.1, train_all=True), trainer=own)
    fed.run_round()  # the classic way needs no hold on the loop


@pytest.mark.parametrize("sparsify", [None, "topk:0.1"])
def test_train_all_coordinates_without_rand_k_is_refused(sparsify):
    with pytest.raises(ConfigError, match="needs --sparsify randk"):
        Compression.parse(sparsify, train_all=True)
    with pytest.raises(ConfigError, match="needs --sparsify randk"):
        RunConfig(protect="plain", sparsify=sparsify, train_all_coordinates=True)


def test_a_subspace_checks_its_inputs():
    with pytest.raises(ValueError, match="lr_scale"):
        Subspace({}, 0.5)
    with pytest.raises(TypeError, match="bool tensor"):
        Subspace({"w": torch.ones(3)}, 2.0)
    spec, _, kept = _round_subspace(SmallCNN(width=4))
    subspace = Subspace.of_round(spec, *kept)
    other = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="has no parameter"):
        subspace.hold(other)


def _bn_parameters(model):
    """Copies of the BatchNorm layers' own parameters (FedBN keeps them local)."""
    return {
        f"{prefix}.{name}": p.detach().clone()
        for prefix, module in model.named_modules()
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
        for name, p in module.named_parameters(recurse=False)
    }


def _one_batch(tiny_sites):
    dataset = make_site(tiny_sites[0], batch_size=64, seed=0).train.dataset
    return torch.utils.data.DataLoader(dataset, batch_size=64)


def test_fedbn_local_batchnorm_trains_every_round_at_the_users_rate(tiny_sites):
    """Found in review: the scale is for exchanged coordinates, which train one round in
    n / k; FedBN's local BatchNorm trains every round and must step as the user asked."""
    trainer = LocalTrainer(optimizer_factory=lambda p: torch.optim.SGD(p, lr=0.01))
    fedbn, loader = Algorithm("fedbn"), _one_batch(tiny_sites)
    torch.manual_seed(0)
    dense = SmallCNN(width=4)
    torch.manual_seed(0)
    sparse = SmallCNN(width=4)
    before = _bn_parameters(dense)
    spec = ParamSpec.from_module(sparse, exclude_batchnorm=True)
    compressor = UpdateCompressor(Compression("randk", 0.1), dim=spec.dim, seed=5,
                                  n_trainable=spec.n_trainable)  # fmt: skip
    subspace = Subspace.of_round(spec, *compressor.training_subspace(1))
    trainer.local_update(fedbn, dense, loader, 1)
    trainer.local_update(fedbn, sparse, loader, 1, subspace=subspace)
    assert before and subspace.lr_scale > 9 and not set(before) & set(subspace.masks)
    for name, start in _bn_parameters(sparse).items():
        np.testing.assert_allclose(start - before[name], _bn_parameters(dense)[name] - before[name],
                                   rtol=1e-4, atol=1e-7)  # fmt: skip


def test_an_optimizer_kept_across_rounds_keeps_its_learning_rate(tiny_sites):
    """Found in review: scaling the optimizer's rate in place compounded round after round
    for a factory that returns the same optimizer."""
    torch.manual_seed(0)
    model = SmallCNN(width=4)
    kept = torch.optim.Adam(model.parameters(), lr=1e-3)
    trainer = LocalTrainer(optimizer_factory=lambda params: kept)
    spec, compressor, _ = _round_subspace(model)
    for round in (1, 2, 3):
        subspace = Subspace.of_round(spec, *compressor.training_subspace(round))
        trainer.local_update(FEDAVG, model, _one_batch(tiny_sites), 1, subspace=subspace)
    assert kept.param_groups[0]["lr"] == 1e-3


def test_a_fit_that_predates_subspaces_runs_dense_and_is_refused_under_rand_k(tiny_sites):
    """Found in review: a subclass's ``fit`` without the ``subspace`` argument broke every run
    with a bare TypeError; now it runs as before, and rand-k names the way out."""

    class Mine(LocalTrainer):
        def fit(self, model, loader, epochs, *, prox_mu=None):
            return super().fit(model, loader, epochs, prox_mu=prox_mu)

    Mine().local_update(FEDAVG, SmallCNN(width=4), _one_batch(tiny_sites), 1)
    assert not Mine().trains_subspaces and LocalTrainer().trains_subspaces
    with pytest.raises(ConfigError, match="--train-all-coordinates"):
        _federation(tiny_sites, Compression("randk", 0.1), trainer=Mine())
