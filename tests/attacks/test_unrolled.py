"""The unrolled attack on a multi-step FedAvg update: its simulation of a site's local steps
reproduces what the real engine sends, and inverting through it recovers the image (tiny model,
synthetic lesion images; BreastMNIST with the default CNN where the file is present)."""

import numpy as np
import pytest
import torch
from run_cache import has_breastmnist

from fedshield.attacks import InversionConfig, match, observe_round, unrelated_level
from fedshield.attacks.unrolled import LocalWork, invert_unrolled, simulated_delta
from fedshield.data.sites import SiteData
from fedshield.data.synthetic import synthetic_images
from fedshield.engine.federation import Federation
from fedshield.engine.models import SmallCNN, build_model
from fedshield.engine.site import make_site
from fedshield.engine.trainer import Algorithm, LocalTrainer
from fedshield.errors import ConfigError

SIZE = 16


@pytest.fixture(scope="module")
def images():
    x, y = synthetic_images(8, size=SIZE, seed=3)
    pool, _ = synthetic_images(16, size=SIZE, seed=4)
    return x, y, pool


def _round(x, y, *, sites=1, per_site=1, epochs=5, algorithm="fedavg", trainer=None, model=None):
    """One real plain round (each site's whole set in one batch); the server's view and fed."""
    parts = np.split(np.arange(sites * per_site), sites)
    fed = Federation(
        model_factory=model or (lambda: SmallCNN(1, 2, width=4)),
        sites=[make_site(SiteData(f"s{i}", x[p], y[p], x[:0], y[:0])) for i, p in enumerate(parts)],
        algorithm=Algorithm(algorithm, mu=0.5 if algorithm == "fedprox" else 0.0),
        trainer=trainer, local_epochs=epochs,
    )  # fmt: skip
    steps = 1 if algorithm == "fedsgd" else epochs
    return observe_round(fed, image_shape=tuple(x.shape[1:]), local_steps=steps), fed


def _assert_reproduced(simulated: np.ndarray, observed: np.ndarray) -> None:
    scale = np.abs(observed).max()
    assert scale > 0
    np.testing.assert_allclose(simulated, observed, rtol=0, atol=2e-5 * scale)


OPTIMIZERS = {
    "adam (the default loop)": None,
    "sgd nesterov + weight decay": lambda p: torch.optim.SGD(
        p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3
    ),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, betas=(0.8, 0.99)),
    "adam with L2 weight decay": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.05),
}


@pytest.mark.parametrize(
    ("algorithm", "optimizer"),
    [("fedavg", "adam (the default loop)"), ("fedprox", "adam (the default loop)"),
     ("fedsgd", "adam (the default loop)"), ("fedavg", "sgd nesterov + weight decay"),
     ("fedprox", "adamw"), ("fedavg", "adam with L2 weight decay")],
)  # fmt: skip
def test_simulating_the_true_images_reproduces_the_real_update(images, algorithm, optimizer):
    """The attack's model of a site is right: its steps on the site's true images give the
    update the engine sent (weights and BatchNorm running statistics), to float tolerance."""
    x, y, _ = images
    factory = OPTIMIZERS[optimizer]
    trainer = LocalTrainer(optimizer_factory=factory) if factory else None
    view, fed = _round(x, y, per_site=3, epochs=4, algorithm=algorithm, trainer=trainer)
    seen = view.per_site[0]
    work = LocalWork(fed.trainers[0], fed.algorithm)
    _assert_reproduced(simulated_delta(seen, work, x[:3], y[:3]), seen.delta)


def test_a_wrong_model_of_the_site_does_not_reproduce_it(images):
    """The comparison can fail: another learning rate, or one step fewer, misses."""
    x, y, _ = images
    view, fed = _round(x, y, per_site=2, epochs=3)
    seen = view.per_site[0]
    other = LocalWork(LocalTrainer(optimizer_factory=lambda p: torch.optim.Adam(p, lr=2e-3)))
    fewer = type(seen)(seen.model, seen.spec, seen.start, seen.delta, seen.image_shape, 2)
    same = LocalWork(fed.trainers[0])
    for simulated in (simulated_delta(seen, other, x[:2], y[:2]),
                      simulated_delta(fewer, same, x[:2], y[:2])):  # fmt: skip
        with pytest.raises(AssertionError):
            _assert_reproduced(simulated, seen.delta)


def test_groups_simulate_the_sites_of_a_sum(images):
    """The mean update of 2 sites (what a secure sum reveals) is the mean of 2 simulations."""
    x, y, _ = images
    view, fed = _round(x, y, sites=2, per_site=1, epochs=3)
    simulated = simulated_delta(view.aggregate, LocalWork(fed.trainers[0]), x[:2], y[:2], 2)
    _assert_reproduced(simulated, view.aggregate.delta)


@pytest.mark.skipif(not has_breastmnist(), reason="breastmnist.npz not available")
def test_the_simulation_reproduces_a_breastmnist_round_of_the_default_cnn():
    from fedshield.data import breastmnist_path, load_medmnist

    x, y = load_medmnist(breastmnist_path())["train"]
    view, fed = _round(x, y, epochs=5, model=lambda: build_model("cnn"))
    seen = view.per_site[0]
    _assert_reproduced(simulated_delta(seen, LocalWork(fed.trainers[0]), x[:1], y[:1]), seen.delta)


def test_the_unrolled_attack_recovers_the_image_of_a_fedavg_update(images):
    x, y, pool = images
    view, fed = _round(x[1:], y[1:], epochs=5)
    work = LocalWork(fed.trainers[0], fed.algorithm)
    reconstruction = invert_unrolled(view.per_site[0], work,
                                     config=InversionConfig(steps=300, restarts=2))  # fmt: skip
    (pair,) = match(reconstruction.images, x[1:2])
    floor = unrelated_level(x[1:2], pool)
    assert pair["psnr"] > floor["psnr"] + 2.5, (pair, floor)
    assert pair["ssim"] > floor["ssim"] + 0.2, (pair, floor)


def test_what_cannot_be_simulated_is_refused(images):
    x, y, _ = images
    view, fed = _round(x, y, epochs=2)
    seen = view.per_site[0]
    with pytest.raises(ConfigError, match="train_fn"):
        LocalWork(LocalTrainer(train_fn=lambda model, loader, epochs: {}))
    rmsprop = LocalWork(LocalTrainer(optimizer_factory=lambda p: torch.optim.RMSprop(p)))
    with pytest.raises(ConfigError, match="RMSprop"):
        simulated_delta(seen, rmsprop, x[:1], y[:1])
    amsgrad = LocalWork(LocalTrainer(optimizer_factory=lambda p: torch.optim.Adam(p, amsgrad=True)))
    with pytest.raises(ConfigError, match="amsgrad"):
        simulated_delta(seen, amsgrad, x[:1], y[:1])
    work = LocalWork(fed.trainers[0])
    with pytest.raises(ConfigError, match="bn_mode"):
        invert_unrolled(seen, work, config=InversionConfig(steps=1, restarts=1, bn_mode="eval"))
    with pytest.raises(ConfigError):
        invert_unrolled(seen, work, count=3, config=InversionConfig(steps=1, restarts=1, groups=2))


def test_a_site_of_several_batches_is_refused_not_simulated_wrongly(images):
    x, y, _ = images
    view, fed = _round(x, y, per_site=2, epochs=2)
    assert fed.sites[0].train.batch_size >= 2  # the real site: one batch, simulated
    work = LocalWork(fed.trainers[0], fed.algorithm, batch_size=1)  # 2 images: 2 batches
    with pytest.raises(ConfigError, match="span several batches of 1"):
        simulated_delta(view.per_site[0], work, x[:2], y[:2])
    with pytest.raises(ConfigError, match="span several batches"):
        invert_unrolled(view.per_site[0], work, count=2, labels=y[:2])
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        LocalWork(fed.trainers[0], batch_size=0)
