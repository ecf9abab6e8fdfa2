"""Gradient inversion against real rounds of a tiny model: a plaintext update gives the image
away (the engine's real sessions, synthetic lesion images, whose unrelated pairs already score
about 19 dB). The secure sum against its victim-absent control: ``test_reference.py``."""

import numpy as np
import pytest

from fedshield.attacks import (
    InversionConfig,
    ObservedUpdate,
    invert,
    match,
    observe_round,
    psnr,
    unrelated_level,
)
from fedshield.attacks.inversion import infer_labels
from fedshield.data.sites import SiteData
from fedshield.data.synthetic import synthetic_images
from fedshield.engine.federation import Federation
from fedshield.engine.models import SmallCNN
from fedshield.engine.site import make_site
from fedshield.engine.trainer import Algorithm
from fedshield.errors import ConfigError

SIZE = 16
ATTACK = InversionConfig(steps=600, restarts=3)


@pytest.fixture(scope="module")
def images():
    x, y = synthetic_images(8, size=SIZE, seed=3)
    pool, _ = synthetic_images(16, size=SIZE, seed=4)
    return x, y, pool


def _view(x, y, protect: str, sites: int):
    parts = np.array_split(np.arange(sites), sites)
    fed = Federation(
        model_factory=lambda: SmallCNN(1, 2, width=4),
        sites=[
            make_site(SiteData(f"site{i}", x[p], y[p], x[:0], y[:0])) for i, p in enumerate(parts)
        ],
        algorithm=Algorithm("fedsgd"),
        protect=protect,
    )
    return observe_round(fed, image_shape=(1, SIZE, SIZE))


@pytest.fixture(scope="module")
def plain_result(images):
    x, y, pool = images
    view = _view(x, y, "plain", 2)
    assert set(view.per_site) == {0, 1}  # plain: the server reads each site's update
    seen = view.per_site[0]
    assert infer_labels(seen).tolist() == [int(y[0])]  # iDLG: the label from the bias
    return invert(seen, config=ATTACK), x[:1], unrelated_level(x[:1], pool)


def test_a_plaintext_update_gives_the_image_away(plain_result):
    reconstruction, truth, floor = plain_result
    (pair,) = match(reconstruction.images, truth)
    assert pair["psnr"] > floor["psnr"] + 3, (pair, floor)
    assert pair["ssim"] > floor["ssim"] + 0.2, (pair, floor)


def test_statistics_term_is_what_makes_batch_one_work(images, plain_result):
    """Train-mode BatchNorm at batch 1 hides intensity: without the running-statistic
    deltas the same attack does much worse."""
    x, y, _ = images
    seen = _view(x, y, "plain", 1).per_site[0]
    blind = invert(seen, config=InversionConfig(steps=300, restarts=2, bn_weight=0.0))
    with_stats = match(plain_result[0].images, plain_result[1])[0]["psnr"]
    assert psnr(blind.images[0], x[0]) < with_stats - 2


def test_scores_pair_a_shuffled_batch_back(images):
    x, _, _ = images
    pairs = match(x[[2, 0, 1]], x[:3])
    assert sorted((p["recon"], p["truth"]) for p in pairs) == [(0, 2), (1, 0), (2, 1)]
    assert all(p["psnr"] == 100.0 and p["ssim"] > 0.99 for p in pairs)


@pytest.mark.parametrize(
    "options",
    [{"steps": 0}, {"restarts": 0}, {"lr": -1.0}, {"tv_weight": -1.0}, {"bn_mode": "x"},
     {"combine": "median"}, {"groups": 0}],
)  # fmt: skip
def test_bad_options_are_refused(options):
    with pytest.raises((ConfigError, TypeError)):
        InversionConfig(**options)


def test_bad_observations_are_refused(images):
    x, y, _ = images
    seen = _view(x, y, "plain", 1).per_site[0]
    with pytest.raises(ConfigError):
        ObservedUpdate(seen.model, seen.spec, seen.start, seen.delta[:-1], (1, SIZE, SIZE))
    with pytest.raises(ConfigError):
        ObservedUpdate(seen.model, seen.spec, seen.start, seen.delta * np.nan, (1, SIZE, SIZE))
    with pytest.raises(ConfigError):
        invert(seen, count=3, config=InversionConfig(steps=1, restarts=1, groups=2))
    with pytest.raises(ConfigError):
        invert(seen, count=2, labels=np.array([0]), config=InversionConfig(steps=1, restarts=1))
