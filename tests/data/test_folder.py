"""A site's own folder through its data spec: PNG, NIfTI and DICOM read through MONAI with the
right labels and shapes, the seeded split, the cache, and a site that reads only its own
folder. Every folder is written here (tests/image_folders.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from image_folders import (
    HEIGHT,
    WIDTH,
    dicom_files_site,
    dicom_site,
    marked,
    nifti_site,
    opened_paths,
    png_site,
    read_mark,
    write_csv,
    write_spec,
)

from fedshield.data import DataSpec, SiteData, load_data_spec, load_site_specs
from fedshield.errors import DataError

LABELS = [0, 1, 0, 1, 0, 1, 1, 0, 0, 1]
CLASSES = ["benign", "malignant"]


def _check_marks(site: SiteData, labels: list[int]) -> None:
    """Every image is one of the folder's, once, with its own label (its mark says which)."""
    seen = []
    for x, y in [
        *zip(site.train_x, site.train_y, strict=True),
        *zip(site.test_x, site.test_y, strict=True),
    ]:
        k, label = read_mark(x)
        assert label == labels[k] == y, (k, label, y)
        seen.append(k)
    assert sorted(seen) == list(range(len(labels)))


@pytest.mark.parametrize(
    ("build", "extra"),
    [
        (png_site, {}),
        (nifti_site, {}),
        (lambda root, labels: nifti_site(root, labels, depth=3), {"volumes": "middle-slice"}),
        (dicom_site, {"volumes": "middle-slice"}),
        (dicom_files_site, {}),
    ],
    ids=["png", "nifti", "nifti-volume", "dicom-series", "dicom-files"],
)
def test_each_format_loads_with_its_labels_and_shape(tmp_path, build, extra):
    build(tmp_path / "site", LABELS)
    site = load_data_spec(write_spec(tmp_path / "a.yaml", root="site", classes=CLASSES, **extra))
    assert site.name == "a"  # the file's stem
    assert site.train_x.dtype == np.float32 and site.train_y.dtype == np.int64
    assert site.train_x.shape == (8, 1, HEIGHT, WIDTH) and site.test_x.shape == (
        2,
        1,
        HEIGHT,
        WIDTH,
    )
    assert site.train_x.min() == 0.0 and site.train_x.max() == 1.0  # min-max scaled
    _check_marks(site, LABELS)
    # rows first, as displayed: the first image is exactly the scaled pixels written
    first = np.concatenate([site.train_x, site.test_x])[np.argsort(_order(site))][0, 0]
    np.testing.assert_allclose(first, marked(0, LABELS[0]) / 250, atol=1e-6)


def _order(site: SiteData) -> list[int]:
    return [read_mark(x)[0] for x in np.concatenate([site.train_x, site.test_x])]


def test_rgb_images_keep_three_channels_and_resize_to_the_spec_size(tmp_path):
    png_site(tmp_path / "site", LABELS, rgb=True)
    spec = write_spec(
        tmp_path / "rgb.json", root="site", classes=CLASSES, channels=3, size=[12, 10], name="h"
    )
    site = load_data_spec(spec)
    assert site.name == "h" and site.train_x.shape == (8, 3, 12, 10)
    np.testing.assert_array_equal(site.train_x[:, 0], site.train_x[:, 2])


def test_labels_are_class_names_or_indices_in_the_specs_order(tmp_path):
    png_site(tmp_path / "site", [0, 1, 2, 0, 1, 2])
    names = ["cyst", "benign", "malignant"]
    write_csv(
        tmp_path / "site" / "labels.csv",
        "path,label",
        [
            (f"img{k}.png", label)
            for k, label in enumerate(["cyst", "1", "malignant", "0", "benign", "2"])
        ],
    )
    site = load_data_spec(write_spec(tmp_path / "s.yaml", root="site", classes=names))
    _check_marks(site, [0, 1, 2, 0, 1, 2])


def test_the_split_is_seeded_stratified_and_the_same_at_every_load(tmp_path):
    labels = [0] * 12 + [1] * 8
    png_site(tmp_path / "site", labels)

    def split(seed: int, fraction: float) -> tuple[list[int], list[int]]:
        spec = write_spec(
            tmp_path / "s.yaml", root="site", classes=CLASSES, seed=seed, test_fraction=fraction
        )
        site = load_data_spec(spec)
        return sorted(_order(site)[: site.n_train]), sorted(_order(site)[site.n_train :])

    train, test = split(3, 0.25)
    assert split(3, 0.25) == (train, test)
    assert sorted(train + test) == list(range(20))
    assert [labels[k] for k in test].count(0) == 3 and [labels[k] for k in test].count(1) == 2
    assert split(4, 0.25) != (train, test)
    assert len(split(3, 0.5)[1]) == 10


def test_a_second_load_reads_the_cache_and_a_changed_file_is_read_again(tmp_path):
    root = png_site(tmp_path / "site", LABELS)
    spec = write_spec(tmp_path / "s.yaml", root="site", classes=CLASSES, cache="cache")
    first = load_data_spec(spec)
    (cached,) = (tmp_path / "cache").glob("*.npz")
    with opened_paths() as opened:
        again = load_data_spec(spec)
    assert str(cached) in opened
    assert not [p for p in opened if p.endswith(".png")]  # no image read: all from the cache
    np.testing.assert_array_equal(first.train_x, again.train_x)
    np.testing.assert_array_equal(first.test_y, again.test_y)

    from PIL import Image

    changed = marked(0, LABELS[0])
    changed[2, 2] = 7
    Image.fromarray(changed).save(root / "img0.png")
    with opened_paths() as opened:
        fresh = load_data_spec(spec)
    assert str(root / "img0.png") in opened
    x = np.concatenate([fresh.train_x, fresh.test_x])[_order(fresh).index(0)]
    assert round(float(x[0, 2, 2]) * 250) == 7
    (rewritten,) = (tmp_path / "cache").glob("*.npz")  # the stale cache is gone
    assert rewritten != cached


def test_a_corrupt_cache_file_is_read_past(tmp_path):
    png_site(tmp_path / "site", LABELS)
    spec = write_spec(tmp_path / "s.yaml", root="site", classes=CLASSES, cache="cache")
    first = load_data_spec(spec)
    (cached,) = (tmp_path / "cache").glob("*.npz")
    cached.write_bytes(b"not an npz")
    again = load_data_spec(spec)
    np.testing.assert_array_equal(first.train_x, again.train_x)


def test_a_site_reads_only_its_own_spec_and_folder(tmp_path):
    """Site 1's CSV is a folder: opening it would fail loudly. With ``only=0`` nothing of
    site 1 is opened or listed (Python's audit events); loading every site refuses it."""
    png_site(tmp_path / "a", LABELS)
    png_site(tmp_path / "b", LABELS)
    (tmp_path / "b" / "labels.csv").unlink()
    (tmp_path / "b" / "labels.csv").mkdir()
    specs = [
        write_spec(tmp_path / "a.yaml", root="a", classes=CLASSES),
        write_spec(tmp_path / "b.yaml", root="b", classes=CLASSES),
    ]
    with opened_paths() as opened:
        (site,) = load_site_specs(specs, only=0)
    assert site.name == "a" and site.n_train == 8
    assert any(p.endswith("a/img3.png") for p in opened)  # the hook does see the reads
    assert not [p for p in opened if Path(p).is_relative_to(tmp_path / "b") or p.endswith("b.yaml")]
    with pytest.raises(DataError, match=r"b/labels\.csv: no such file"):
        load_site_specs(specs)


def test_segmentation_pairs_give_masks_of_class_indices(tmp_path):
    from PIL import Image

    root = tmp_path / "site"
    png_site(root, [0] * 6)
    rows = []
    for k in range(6):
        mask = np.zeros((HEIGHT, WIDTH), np.uint8)
        mask[1 : 2 + k % 3, 1:3] = 1
        Image.fromarray(mask).save(root / f"mask{k}.png")
        rows.append((f"img{k}.png", f"mask{k}.png"))
    write_csv(root / "pairs.csv", "image,mask", rows)
    spec = write_spec(
        tmp_path / "seg.yaml", root="site", labels="pairs.csv", task="segmentation", size=[12, 10]
    )
    assert DataSpec.load(spec).classes == ("background", "lesion")
    site = load_data_spec(spec)
    assert site.task == "segmentation" and site.train_y.shape == (5, 1, 12, 10)
    assert site.test_y.dtype == np.int64 and set(np.unique(site.train_y)) == {0, 1}
    for x, y in zip(site.train_x, site.train_y, strict=True):  # nearest: 2x the rows' area
        k = read_mark(x[:, ::2, ::2])[0]
        assert y.sum() == 2 * 2 * 2 * (1 + k % 3)
