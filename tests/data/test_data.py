from pathlib import Path

import numpy as np
import pytest

from fedshield.data import (
    breastmnist_path,
    dirichlet_partition,
    iid_partition,
    load_medmnist,
    load_sites,
    make_synthetic_sites,
)
from fedshield.data.shift import AcquisitionShift, apply_shift, bias_field
from fedshield.errors import ConfigError, DataError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "breastmnist.npz"


def _write_npz(path, label_shape_2d=False, drop=None, n=(20, 6, 8)):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, size in zip(("train", "val", "test"), n, strict=True):
        labels = rng.integers(0, 2, size=size)
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(size, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = labels[:, None] if label_shape_2d else labels
    if drop:
        del arrays[drop]
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("two_d", [False, True])
def test_medmnist_accepts_both_label_shapes(tmp_path, two_d):
    splits = load_medmnist(_write_npz(tmp_path / "m.npz", label_shape_2d=two_d))
    x, y = splits["train"]
    assert x.shape == (20, 1, 28, 28) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1
    assert y.shape == (20,) and y.dtype == np.int64


def test_missing_and_malformed_files_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_medmnist(tmp_path / "absent.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"junk\.npz: not a readable"):
        load_medmnist(tmp_path / "junk.npz")
    with pytest.raises(DataError, match=r"missing key 'test_labels'"):
        load_medmnist(_write_npz(tmp_path / "m.npz", drop="test_labels"))


def test_breastmnist_path_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSHIELD_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import fedshield.data.medmnist as medmnist

    monkeypatch.setattr(medmnist, "__file__", str(tmp_path / "a" / "b" / "c" / "m.py"))
    with pytest.raises(DataError) as err:
        breastmnist_path()
    assert str(tmp_path / "breastmnist.npz") in str(err.value)
    assert "FEDSHIELD_DATA" in str(err.value)


def test_fedshield_data_env_var_wins(tmp_path, monkeypatch):
    _write_npz(tmp_path / "breastmnist.npz")
    monkeypatch.setenv("FEDSHIELD_DATA", str(tmp_path))
    assert breastmnist_path() == tmp_path / "breastmnist.npz"


@pytest.mark.skipif(not SHARED.exists(), reason="shared BreastMNIST copy not present")
def test_real_breastmnist_loads_with_the_official_split():
    splits = load_medmnist(SHARED)
    assert [len(splits[s][1]) for s in ("train", "val", "test")] == [546, 78, 156]
    sites = load_sites("breastmnist", 4, seed=0)
    assert sum(s.n_train for s in sites) == 546
    assert sum(len(s.test_y) for s in sites) == 156


def test_partitions_cover_every_index_once():
    labels = np.random.default_rng(1).integers(0, 2, size=101)
    for parts in (
        iid_partition(labels, 4, seed=0),
        dirichlet_partition(labels, 4, alpha=0.3, seed=0),
    ):
        joined = np.concatenate(parts)
        assert sorted(joined.tolist()) == list(range(101))


def test_dirichlet_small_alpha_skews_labels_more_than_iid():
    labels = np.repeat([0, 1], 500)

    def spread(parts):
        return np.std([labels[p].mean() for p in parts])

    assert spread(dirichlet_partition(labels, 5, alpha=0.1, seed=0)) > 3 * spread(
        iid_partition(labels, 5, seed=0)
    )


def test_synthetic_sites_are_deterministic_and_shifted():
    a = make_synthetic_sites(3, train_per_site=40, test_per_site=10, seed=4)
    b = make_synthetic_sites(3, train_per_site=40, test_per_site=10, seed=4)
    for sa, sb in zip(a, b, strict=True):
        np.testing.assert_array_equal(sa.train_x, sb.train_x)
    # The scanners differ: noise and blur change the pixel-to-pixel roughness.
    roughness = [np.abs(np.diff(s.train_x, axis=-1)).mean() for s in a]
    assert max(roughness) > 2 * min(roughness)
    assert {int(y) for y in a[0].train_y} == {0, 1}


def test_bias_field_strength_bounds_the_field():
    field = bias_field((28, 28), strength=0.3, seed=2)
    assert np.exp(-0.3) - 1e-6 <= float(field.min()) and float(field.max()) <= np.exp(0.3) + 1e-6
    images = np.ones((2, 1, 28, 28), np.float32)
    out = apply_shift(images, AcquisitionShift(scale=2.0, offset=0.5), noise_seed=0)
    np.testing.assert_allclose(out, 2.5)


def test_unknown_dataset_is_a_config_error():
    with pytest.raises(ConfigError, match="synthetic, breastmnist or medmnist"):
        load_sites("imagenet", 2)
