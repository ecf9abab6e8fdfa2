import numpy as np
import pytest
import torch
from torch import nn

from fedshield.engine.models import SmallCNN
from fedshield.engine.paramspec import ParamEntry, ParamSpec


def test_flatten_unflatten_round_trip_and_layout():
    torch.manual_seed(0)
    model = SmallCNN()
    spec = ParamSpec.from_module(model)
    vec = spec.flatten(model)
    assert vec.dtype == np.float32 and vec.shape == (spec.dim,)
    n_params = sum(p.numel() for p in model.parameters())
    assert spec.n_trainable == n_params
    assert all(e.trainable for e in spec.entries[: len(list(model.parameters()))])
    assert not any(name.endswith("num_batches_tracked") for name in spec.names)
    restored = spec.unflatten(vec)
    for name, tensor in restored.items():
        assert torch.equal(tensor, model.state_dict()[name])


def test_load_into_writes_exactly_the_vector():
    torch.manual_seed(0)
    a, b = SmallCNN(), SmallCNN()
    spec = ParamSpec.from_module(a)
    spec.load_into(b, spec.flatten(a))
    np.testing.assert_array_equal(spec.flatten(b), spec.flatten(a))


def test_fedbn_spec_leaves_out_every_batchnorm_tensor():
    model = SmallCNN()
    spec = ParamSpec.from_module(model, exclude_batchnorm=True)
    bn_names = {
        f"{m}.{t}"
        for m, mod in model.named_modules()
        if isinstance(mod, torch.nn.BatchNorm2d)
        for t in ("weight", "bias", "running_mean", "running_var")
    }
    assert bn_names and not (bn_names & spec.names)
    assert spec.dim == sum(p.numel() for n, p in model.named_parameters() if n not in bn_names)
    assert bn_names <= set(spec.local_state(model))


def test_wrong_vector_is_refused():
    spec = ParamSpec.from_module(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError):
        spec.load_into(torch.nn.Linear(2, 2), np.zeros(spec.dim + 1, np.float32))
    with pytest.raises(ValueError):
        spec.unflatten(np.zeros(spec.dim, np.float64))


def test_aggregated_running_variances_never_go_negative():
    model = SmallCNN()
    spec = ParamSpec.from_module(model)
    vec = spec.flatten(model)
    vec[:] = -1.0
    spec.clamp_variances(vec)
    for e in spec.entries:
        chunk = vec[e.offset : e.offset + e.size]
        if e.name.endswith("running_var"):
            assert (chunk == 0).all()
        else:
            assert (chunk == -1).all()


def test_sha256_names_every_bit_of_the_exchanged_state():
    model = nn.Linear(3, 2)
    spec = ParamSpec.from_module(model)
    vector = spec.flatten(model)
    digest = spec.sha256(vector)
    assert digest == spec.sha256(vector.copy()) and len(digest) == 64
    flipped = vector.copy()
    flipped.view(np.uint32)[5] ^= 1  # the last bit of one bias value
    assert spec.sha256(flipped) != digest
    renamed = ParamSpec([ParamEntry("w", e.shape, e.offset, e.size, e.trainable) if i == 0 else e
                         for i, e in enumerate(spec.entries)])  # fmt: skip
    assert renamed.sha256(vector) != digest


def test_fedbn_keeps_batch_and_instance_norms_local_and_sends_group_and_layer_norms():
    """FedBN's choice (``LOCAL_NORMS``): layers that carry statistics of a site's features
    stay local; per-example norms without statistics travel like any weight."""
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.InstanceNorm2d(4, affine=True,
        track_running_stats=True), nn.GroupNorm(2, 4), nn.LayerNorm([4, 6, 6]),
        nn.SyncBatchNorm(4), nn.Flatten(), nn.Linear(144, 2),
    )  # fmt: skip
    spec = ParamSpec.from_module(model, exclude_batchnorm=True)
    assert spec.names == {"0.weight", "0.bias", "3.weight", "3.bias", "4.weight", "4.bias",
                          "7.weight", "7.bias"}  # fmt: skip
    local = set(spec.local_state(model))
    assert {"1.running_var", "2.weight", "2.running_mean", "5.bias"} <= local


def test_fedbn_spec_of_a_bare_batchnorm_layer_is_empty():
    spec = ParamSpec.from_module(nn.BatchNorm1d(3), exclude_batchnorm=True)
    assert spec.dim == 0 and ParamSpec.from_module(nn.BatchNorm1d(3)).dim == 12
