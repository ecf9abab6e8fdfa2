"""Reference levels scored like the attack, and the verdict they give: on a tiny model a
plaintext update leaks against the victim-absent control, a 4-site secure sum (``secagg``, or
threshold ``he``, whose server decrypts the sum from the partials) stays at it, and one
site's update scored the same way as the sum does not."""

import numpy as np
import pytest

from fedshield.attacks import InversionConfig, invert, match, observe_round
from fedshield.attacks.he_view import server_decrypted_sum
from fedshield.attacks.reference import (
    MIN_MARGIN_DB,
    control_indices,
    level,
    matched_mean_image,
    matched_unrelated,
    verdict,
)
from fedshield.data.sites import SiteData
from fedshield.data.synthetic import synthetic_images
from fedshield.engine.federation import Federation
from fedshield.engine.models import SmallCNN
from fedshield.engine.site import make_site
from fedshield.engine.trainer import Algorithm
from fedshield.errors import ConfigError, ProtocolAbort
from fedshield.protocols.registry import get_protocol

SIZE = 16
SITES = 4
DRAWS = 2
ATTACK = InversionConfig(steps=600, restarts=3)


@pytest.fixture(scope="module")
def data():
    x, y = synthetic_images(24, size=SIZE, seed=3)
    pool, _ = synthetic_images(16, size=SIZE, seed=4)
    return x, y, pool


def _federation(x, y, chosen, protect) -> Federation:
    """One site per index in ``chosen``, each holding that one image (FedSGD at batch 1)."""
    data = [SiteData(f"s{k}", x[[i]], y[[i]], x[:0], y[:0]) for k, i in enumerate(chosen)]
    sites = [make_site(d) for d in data]
    return Federation(
        model_factory=lambda: SmallCNN(1, 2, width=4),
        sites=sites,
        algorithm=Algorithm("fedsgd"),
        protect=protect,
    )


def _psnr(images, truth) -> float:
    """A reconstruction scored as the bench scores it (Hungarian matching: best of k)."""
    return float(np.mean([p["psnr"] for p in match(images, truth)]))


@pytest.fixture(scope="module")
def rounds(data):
    """PSNR against the victims (x[:4]) of: site 0's plaintext update, the secure sum, and
    the same two in victim-absent control rounds (other images of the victims' labels)."""
    x, y, _ = data
    victims = np.arange(SITES)
    out = {"plain": [], "sum": []}
    for chosen in [victims, *control_indices(y, victims, DRAWS)]:
        plain = observe_round(_federation(x, y, chosen, "plain"), image_shape=(1, SIZE, SIZE))
        site0 = invert(plain.per_site[0], config=ATTACK).images
        out["plain"].append(_psnr(site0, x[:1]))
        secure = observe_round(_federation(x, y, chosen, "secagg"), image_shape=(1, SIZE, SIZE))
        assert secure.per_site == {}  # masked: only the sum
        out["sum"].append(_psnr(invert(secure.aggregate, config=ATTACK).images, x[victims]))
        if chosen is victims:  # one site's update, scored like the sum (best of 4)
            out["one site as the sum"] = _psnr(site0, x[victims])
    return out


def test_a_plaintext_update_leaks_against_its_control(rounds):
    got, control = rounds["plain"][0], level(rounds["plain"][1:])
    assert verdict(got, control)["verdict"] == "leaks", (got, control)
    assert got > control["psnr"] + 3, (got, control)


def test_a_four_site_secure_sum_stays_at_its_control(rounds):
    got, control = rounds["sum"][0], level(rounds["sum"][1:])
    assert verdict(got, control)["verdict"] == "at reference", (got, control)


def test_the_sum_check_fails_when_the_attacker_gets_one_sites_update(rounds):
    """The same check, fed one site's update instead of the sum, reports the leak: the
    secure-sum test above can fail."""
    got, control = rounds["one site as the sum"], level(rounds["sum"][1:])
    assert verdict(got, control)["verdict"] == "leaks", (got, control)


def test_threshold_he_server_decrypts_the_same_sum_from_the_partials(data):
    x, y, _ = data
    chosen = np.arange(SITES)
    secure = observe_round(_federation(x, y, chosen, "secagg"), image_shape=(1, SIZE, SIZE))
    spec = get_protocol("he", he_keys="threshold", max_weight=1.0, sites=SITES)
    fed = _federation(x, y, chosen, spec)
    seen = observe_round(fed, image_shape=(1, SIZE, SIZE))  # checks it equals the sites' sum
    assert seen.per_site == {}  # ciphertexts under a key no one holds: nothing per site
    plain = observe_round(_federation(x, y, chosen, "plain"), image_shape=(1, SIZE, SIZE))
    truth = plain.aggregate.delta  # the float mean; both protections quantize it alike
    assert np.linalg.norm(seen.aggregate.delta - truth) < 0.05 * np.linalg.norm(truth)
    assert np.array_equal(seen.aggregate.delta, secure.aggregate.delta)


def test_server_decryption_refuses_an_unfinished_round(data):
    x, y, _ = data
    spec = get_protocol("he", he_keys="threshold", max_weight=1.0, sites=2)
    fed = _federation(x, y, np.arange(2), spec)
    dim = fed.server.model.compressor.protocol_dim
    server = fed.protocol.server(round=1, clients=[0, 1], dim=dim)
    with pytest.raises(ProtocolAbort):
        server_decrypted_sum(server, None)
    with pytest.raises(TypeError):
        server_decrypted_sum(object(), None)


def test_a_shared_key_he_server_has_no_sum_to_attack(data):
    x, y, _ = data
    fed = _federation(x, y, np.arange(2), get_protocol("he", max_weight=1.0, sites=2))
    with pytest.raises(ProtocolAbort, match="learns no aggregate"):
        observe_round(fed, image_shape=(1, SIZE, SIZE))


def test_controls_hold_other_images_of_the_victims_labels():
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 0])
    victims = np.array([0, 1, 2])
    draws = control_indices(labels, victims, 2)
    used = np.concatenate(draws)
    assert len(set(used.tolist())) == len(used) and not set(used) & set(victims)
    for chosen in draws:
        assert labels[chosen].tolist() == labels[victims].tolist()
    with pytest.raises(ConfigError, match="too few images of label 0"):
        control_indices(labels, victims, 3)  # 3 x 2 victims of label 0; 4 others


def test_references_are_scored_with_the_attacks_matching(data):
    x, _, pool = data
    one = matched_unrelated(x[:4], pool, count=1, draws=8)
    four = matched_unrelated(x[:4], pool, count=4, draws=4)
    assert one["draws"] == 8 and len(one["values"]) == 8
    assert one["psnr"] > four["psnr"]  # one image against the best of four truths: higher
    exact = matched_mean_image(x[:1], x[:1], count=1)
    assert exact["psnr"] == 100.0  # the mean of the truth alone is the truth
    with pytest.raises(ConfigError):
        matched_unrelated(x[:4], pool, count=4, draws=5)  # 20 images from a pool of 16


def test_the_verdict_follows_the_controls_spread():
    control = level([14.0, 15.0, 16.0])  # sd 1: margin 2
    assert verdict(16.9, control)["verdict"] == "at reference"
    leak = verdict(17.1, control)
    assert leak["verdict"] == "leaks"
    assert (leak["gain_db"], leak["margin_db"]) == pytest.approx((2.1, 2.0))
    assert verdict(15.4, level([15.0]))["margin_db"] == MIN_MARGIN_DB
    assert verdict(15.6, level([15.0]))["verdict"] == "leaks"
    with pytest.raises(ConfigError):
        level([])
