"""FedAvg, FedProx, FedSGD and FedBN as the engine runs them."""

import copy
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedshield import wire
from fedshield.engine import (
    Algorithm,
    DropoutPolicy,
    Federation,
    InProcessTransport,
    LocalTrainer,
    make_site,
)
from fedshield.engine.models import SmallCNN


def _small_cnn():
    return SmallCNN(width=4)


def _federation(tiny_sites, algorithm, *, model=_small_cnn, **kwargs):
    sites = [make_site(s, batch_size=8, seed=i) for i, s in enumerate(tiny_sites)]
    trainer = LocalTrainer(optimizer_factory=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    return Federation(
        model_factory=model, sites=sites, algorithm=algorithm, trainer=trainer, seed=1, **kwargs
    )


def test_fedprox_with_mu_zero_equals_fedavg_bit_for_bit(tiny_sites):
    avg = _federation(tiny_sites, Algorithm("fedavg"), local_epochs=2)
    prox = _federation(tiny_sites, Algorithm("fedprox", mu=0.0), local_epochs=2)
    prox_mu = _federation(tiny_sites, Algorithm("fedprox", mu=0.5), local_epochs=2)
    for _ in range(2):
        avg.run_round(), prox.run_round(), prox_mu.run_round()
    assert np.array_equal(avg.global_vector, prox.global_vector)
    assert not np.array_equal(avg.global_vector, prox_mu.global_vector)  # mu does act


def test_fedprox_pulls_towards_the_global_model(tiny_sites):
    far = {}
    for mu in (0.0, 5.0):
        fed = _federation(tiny_sites, Algorithm("fedprox", mu=mu), local_epochs=3)
        start = fed.global_vector.copy()
        fed.run_round()
        far[mu] = np.linalg.norm(fed.global_vector - start)
    assert far[5.0] < far[0.0]


class _Recorder(InProcessTransport):
    """Keeps every reply it carried, to inspect what actually went over the wire."""

    sent: ClassVar[list[bytes]] = []

    def exchange(self, stage, messages):
        replies = super().exchange(stage, messages)
        _Recorder.sent += [r.data for r in replies.values() if r.data is not None]
        return replies


def test_fedbn_never_sends_batchnorm_parameters_or_statistics(tiny_sites, monkeypatch):
    import fedshield.engine.federation as federation

    monkeypatch.setattr(federation, "InProcessTransport", _Recorder)
    _Recorder.sent = []
    fedbn = _federation(tiny_sites, Algorithm("fedbn"))
    fedavg = _federation(tiny_sites, Algorithm("fedavg"))
    bn_size = sum(
        m.weight.numel() * 4  # weight, bias, running mean, running var
        for m in fedavg.model.modules()
        if isinstance(m, nn.BatchNorm2d)
    )
    assert fedbn.spec.dim == fedavg.spec.dim - bn_size
    rec_bn, rec_avg = fedbn.run_round(), fedavg.run_round()
    assert rec_avg.bytes_up_per_client - rec_bn.bytes_up_per_client == 4 * bn_size
    bn_messages = _Recorder.sent[: len(tiny_sites)]
    for data in bn_messages:  # decoded content: exactly the non-BN update
        update = wire.parse(data).fields[1]
        assert update.shape == (fedbn.spec.dim,)
    # Each site keeps its own BatchNorm: the sites' running means now differ.
    means = [s["features.1.running_mean"] for s in fedbn.local_states]
    assert not torch.equal(means[0], means[1])


def test_fedsgd_with_one_site_is_one_centralised_sgd_step(tiny_sites):
    data = tiny_sites[0]
    site = make_site(data, batch_size=7, seed=0)  # several uneven batches
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    reference = copy.deepcopy(model)
    fed = Federation(
        model_factory=lambda: copy.deepcopy(model),
        sites=[site],
        algorithm=Algorithm("fedsgd", sgd_lr=0.3),
        seed=3,
    )
    fed.run_round()
    # Centralised: one full-batch gradient over all the site's data, one SGD step.
    x, y = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.3)
    nn.CrossEntropyLoss()(reference(x), y).backward()
    optimizer.step()
    expected = fed.spec.flatten(reference)
    np.testing.assert_allclose(fed.global_vector, expected, rtol=1e-5, atol=1e-7)


def _shift_by_site_size(model, loader, epochs):
    """A deterministic 'training': add the site's sample count to every value."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(float(len(loader.dataset)))
    return {}


def test_dropped_client_is_excluded_and_weights_renormalise(tiny_sites):
    sites = [make_site(s) for s in tiny_sites]  # 24, 16 and 32 samples
    fed = Federation(
        model_factory=lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 2)),
        sites=sites,
        trainer=LocalTrainer(train_fn=_shift_by_site_size),
        dropout=DropoutPolicy(schedule={"input": [1]}),
    )
    start = fed.global_vector.copy()
    record = fed.run_round()
    assert record.clients == [0, 2] and record.dropped == [1]
    expected_delta = (24 * 24 + 32 * 32) / (24 + 32)  # weights renormalised over 0 and 2
    np.testing.assert_allclose(fed.global_vector - start, expected_delta, rtol=1e-5)


def test_round_with_every_client_dropped_keeps_the_model(tiny_sites):
    sites = [make_site(s) for s in tiny_sites]
    fed = Federation(
        model_factory=lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 2)),
        sites=sites,
        trainer=LocalTrainer(train_fn=_shift_by_site_size),
        dropout=DropoutPolicy(schedule={"input": [0, 1, 2]}),
    )
    start = fed.global_vector.copy()
    record = fed.run_round()
    assert record.aborted and record.clients == [] and record.dropped == [0, 1, 2]
    np.testing.assert_array_equal(fed.global_vector, start)


def test_user_train_fn_is_used(tiny_sites):
    calls = []

    def train_fn(model, loader, epochs):
        calls.append(epochs)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        return {"custom": 1}

    sites = [make_site(s) for s in tiny_sites]
    fed = Federation(
        model_factory=lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 2)),
        sites=sites,
        trainer=LocalTrainer(train_fn=train_fn),
        local_epochs=4,
    )
    start = fed.global_vector.copy()
    fed.run_round()
    assert calls == [4, 4, 4]
    np.testing.assert_allclose(fed.global_vector, start + 1.0, rtol=1e-6)


def test_server_optimizer_touches_only_trainable_values(tiny_sites):
    from fedshield.aggregation import FedAdam

    fed = _federation(tiny_sites, Algorithm("fedavg"), server_opt=FedAdam(lr=0.01))
    fed.run_round()
    k = fed.spec.n_trainable
    var_slices = [e for e in fed.spec.entries if e.name.endswith("running_var")]
    assert all(e.offset >= k for e in var_slices)
    for e in var_slices:
        assert (fed.global_vector[e.offset : e.offset + e.size] > 0).all()


def test_loader_dataset_for_fedsgd_counts_every_sample():
    x = torch.randn(10, 3)
    loader = DataLoader(TensorDataset(x, torch.zeros(10, dtype=torch.long)), batch_size=4)
    model = nn.Linear(3, 2)
    info = LocalTrainer().gradient_step(model, loader, lr=0.1)
    assert info["samples"] == 10
