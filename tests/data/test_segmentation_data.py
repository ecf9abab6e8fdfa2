"""Segmentation data: synthetic lesion masks, the segmentation ``.npz`` loader, SiteData's
mask layout."""

import numpy as np
import pytest

from fedshield.data import (
    SiteData,
    load_segmentation,
    load_sites,
    make_synthetic_sites,
    segmentation_sites,
)
from fedshield.data.synthetic import synthetic_images, synthetic_segmentation
from fedshield.errors import ConfigError, DataError


def test_segmentation_images_are_the_classification_draws_with_a_lesion_on_each():
    """The same random stream: where the classification image carries a lesion, the
    segmentation image is that image, bit for bit (so the binary path's draws are untouched)."""
    x_cls, y_cls = synthetic_images(64, seed=5)
    x_seg, masks = synthetic_segmentation(64, seed=5)
    assert 0 < y_cls.sum() < 64
    np.testing.assert_array_equal(x_seg[y_cls == 1], x_cls[y_cls == 1])
    assert not np.array_equal(x_seg[y_cls == 0], x_cls[y_cls == 0])
    assert masks.shape == (64, 1, 28, 28) and masks.dtype == np.int64
    assert set(np.unique(masks)) == {0, 1} and (masks.sum(axis=(1, 2, 3)) > 0).all()


def test_a_mask_is_where_the_lesion_reaches_half_its_peak():
    """The lesion alone is the image minus the same draws without lesions (prevalence 0)."""
    x_seg, masks = synthetic_segmentation(32, seed=2)
    tissue, empty = synthetic_segmentation(32, seed=2, prevalence=0.0)
    assert not empty.any()
    lesion = (x_seg - tissue)[:, 0].astype(np.float64)
    peak = lesion.max(axis=(1, 2), keepdims=True)  # the centre is a pixel: exp(0) there
    above = lesion >= peak / 2
    clear = np.abs(lesion - peak / 2) > 1e-4 * peak  # float rounding at the very edge aside
    np.testing.assert_array_equal(above[clear], masks[:, 0].astype(bool)[clear])
    # The lesion's area at half maximum: radius sqrt(2 ln 2) sigma, sigma in [2, 3.5).
    area = masks.sum(axis=(1, 2, 3))
    assert area.min() >= 12 and area.max() <= 60


def test_masks_survive_the_site_shift_and_still_mark_the_lesions():
    shifted = make_synthetic_sites(4, train_per_site=40, test_per_site=20, task="segmentation")
    plain = make_synthetic_sites(
        4, train_per_site=40, test_per_site=20, task="segmentation", shift=False
    )
    for a, b in zip(shifted, plain, strict=True):
        assert a.task == "segmentation" and a.train_y.shape == (40, 1, 28, 28)
        np.testing.assert_array_equal(a.train_y, b.train_y)  # geometry: unchanged
        np.testing.assert_array_equal(a.test_y, b.test_y)
        assert not np.allclose(a.train_x, b.train_x)  # intensities: shifted
        inside = a.train_x[a.train_y == 1].mean()
        assert inside > a.train_x[a.train_y == 0].mean() + 0.05  # still brighter under it


def test_the_classification_sites_keep_labels():
    (site,) = make_synthetic_sites(1, train_per_site=10, test_per_site=5)
    assert site.task == "classification" and site.train_y.shape == (10,)
    with pytest.raises(ValueError, match="task must be one of"):
        make_synthetic_sites(1, task="detection")


def test_sitedata_checks_the_mask_layout():
    x = np.zeros((4, 1, 8, 8), np.float32)
    masks = np.zeros((4, 1, 8, 8), np.int64)
    assert SiteData("s", x, masks, x, masks).task == "segmentation"
    with pytest.raises(ValueError, match=r"masks must be \(N, 1, H, W\) with the images' H and W"):
        SiteData("s", x, np.zeros((4, 1, 4, 4), np.int64), x, masks)
    with pytest.raises(ValueError, match=r"masks must be \(N, 1, H, W\)"):
        SiteData("s", x, np.zeros((4, 2, 8, 8), np.int64), x, masks)
    with pytest.raises(ValueError, match="both be labels"):
        SiteData("s", x, masks, x, np.zeros(4, np.int64))
    with pytest.raises(ValueError, match=r"labels \(N,\) or masks \(N,1,H,W\)"):
        SiteData("s", x, np.zeros((4, 8, 8), np.int64), x, masks)


def _write_seg(path, *, drop=None, n=(12, 6), **override):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, size in zip(("train", "test"), n, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(size, 28, 28), dtype=np.uint8)
        arrays[f"{split}_masks"] = rng.integers(0, 2, size=(size, 28, 28)).astype(np.uint8)
    arrays.update(override)
    if drop:
        del arrays[drop]
    np.savez(path, **arrays)
    return path


def test_the_loader_reads_images_and_binary_masks(tmp_path):
    splits = load_segmentation(_write_seg(tmp_path / "s.npz"))
    x, y = splits["train"]
    assert x.shape == (12, 1, 28, 28) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1
    assert y.shape == (12, 1, 28, 28) and y.dtype == np.int64 and set(np.unique(y)) == {0, 1}
    rgb = np.random.default_rng(1).random((6, 28, 28, 3)).astype(np.float32)
    bool_masks = np.zeros((6, 28, 28, 1), bool)
    splits = load_segmentation(
        _write_seg(tmp_path / "rgb.npz", test_images=rgb, test_masks=bool_masks)
    )
    x, y = splits["test"]
    assert x.shape == (6, 3, 28, 28) and np.allclose(x, np.moveaxis(rgb, -1, 1))
    assert y.shape == (6, 1, 28, 28) and not y.any()


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"drop": "test_masks"}, "missing key 'test_masks'"),
        ({"train_masks": np.zeros((12, 14, 14), np.uint8)}, r"has shape \(12, 14, 14\)"),
        ({"train_masks": np.zeros((11, 28, 28), np.uint8)}, "one mask per image"),
        ({"test_masks": np.full((6, 28, 28), 255, np.uint8)}, r"binary.*found values \[255\]"),
        ({"test_masks": np.zeros((6, 28, 28), np.float32)}, "integer or bool"),
        ({"train_images": np.zeros((12, 28), np.uint8)}, r"expected \(N, H, W\[, C\]\)"),
        ({"train_images": np.full((12, 28, 28), np.nan)}, "finite numbers"),
    ],
)
def test_the_loader_names_what_is_wrong(tmp_path, override, match):
    drop = override.pop("drop", None)
    with pytest.raises(DataError, match=match):
        load_segmentation(_write_seg(tmp_path / "bad.npz", drop=drop, **override))


def test_the_loader_refuses_what_is_no_npz(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_segmentation(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        load_segmentation(tmp_path / "text.npz")


def test_a_segmentation_file_is_dealt_over_sites(tmp_path):
    path = _write_seg(tmp_path / "s.npz")
    sites = load_sites(str(path), 3, task="segmentation", seed=1)
    assert [s.n_train for s in sites] == [4, 4, 4] and sum(len(s.test_y) for s in sites) == 6
    assert all(s.task == "segmentation" for s in sites)
    (only,) = load_sites(str(path), 3, task="segmentation", seed=1, only=2)
    np.testing.assert_array_equal(only.train_x, sites[2].train_x)
    shifted = segmentation_sites(path, 3, shift=True, seed=1)
    for a, b in zip(shifted, sites, strict=True):
        np.testing.assert_array_equal(a.train_y, b.train_y)
        assert not np.allclose(a.train_x, b.train_x)


def test_segmentation_sites_refuse_what_they_cannot_do(tmp_path):
    path = _write_seg(tmp_path / "s.npz")
    with pytest.raises(ConfigError, match="no class label to skew"):
        load_sites(str(path), 2, task="segmentation", partition="dirichlet")
    with pytest.raises(ConfigError, match="use at most 6 sites"):
        load_sites(str(path), 7, task="segmentation")
    with pytest.raises(ConfigError, match="needs masks"):
        load_sites("breastmnist", 2, task="segmentation")
    with pytest.raises(ConfigError, match="unknown task"):
        load_sites("synthetic", 2, task="detection")
