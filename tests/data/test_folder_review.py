"""A hospital engineer's folder, adversarially: palette PNGs, CSVs written on Windows, a row
listed twice, the split under a reordered CSV, the cache under a replaced file and concurrent
loads, a DICOM folder holding two series, and links that leave the site's root."""

from __future__ import annotations

import os
import random
import shutil
import threading
import time

import numpy as np
import pytest
from image_folders import marked, png_site, read_mark, write_csv, write_dicom, write_spec

from fedshield.data import load_data_spec
from fedshield.errors import DataError

CLASSES = ["benign", "malignant"]
LABELS = [0, 1] * 5


def _marks(site) -> tuple[list[int], list[int]]:
    """The image numbers (marks) of a site's train and test parts, each sorted."""
    train = sorted(read_mark(x)[0] for x in site.train_x)
    return train, sorted(read_mark(x)[0] for x in site.test_x)


def test_a_palette_png_is_read_as_the_levels_it_shows_not_its_palette_indices(tmp_path):
    """PNG optimisers store a grey image as palette indices in any order: the pixels are the
    palette's levels (a grey palette gives one channel, a colour one three)."""
    from PIL import Image

    root = png_site(tmp_path / "site", LABELS)
    images = [marked(k, label) for k, label in enumerate(LABELS)]
    palette = np.random.default_rng(0).permutation(np.unique(images)).astype(np.uint8)
    index = np.zeros(256, np.uint8)
    index[palette] = np.arange(len(palette))  # the palette, scrambled: level -> its index
    for k, pixels in enumerate(images):
        image = Image.fromarray(index[pixels], mode="P")
        image.putpalette(np.repeat(palette, 3).tolist())
        image.save(root / f"img{k}.png")
    site = load_data_spec(write_spec(tmp_path / "s.yaml", root="site", classes=CLASSES))
    assert site.train_x.shape[1] == 1
    for x in site.train_x:
        k, label = read_mark(x)
        np.testing.assert_allclose(x[0], marked(k, label) / 250, atol=1e-6)

    colours = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    colours.putpalette([200, 10, 0, 0, 50, 250])
    for k in range(len(LABELS)):
        colours.save(root / f"img{k}.png")
    spec = write_spec(tmp_path / "rgb.yaml", root="site", classes=CLASSES, channels=3)
    x = load_data_spec(spec).train_x[0]
    np.testing.assert_allclose(x[:, 0, 0] * 250, [200, 10, 0], atol=1e-4)  # min-max: 0..250
    np.testing.assert_allclose(x[:, 0, 1] * 250, [0, 50, 250], atol=1e-4)


def test_a_palette_mask_keeps_its_indices_as_classes(tmp_path):
    """A mask saved as a palette PNG (black background, red lesion) holds the class indices
    themselves: they are not turned into colours."""
    from PIL import Image

    root = png_site(tmp_path / "site", [0] * 6)
    for k in range(6):
        mask = Image.fromarray((marked(k, 0) == 250).astype(np.uint8), mode="P")
        mask.putpalette([0, 0, 0, 255, 0, 0])
        mask.save(root / f"m{k}.png")
    write_csv(root / "p.csv", "image,mask", [(f"img{k}.png", f"m{k}.png") for k in range(6)])
    spec = write_spec(tmp_path / "seg.yaml", root="site", labels="p.csv", task="segmentation")
    site = load_data_spec(spec)
    assert all(y.sum() == 1 and y[0, -1, -1] == 1 for y in site.train_y)


def test_a_windows_csv_with_bom_crlf_and_quoted_fields_after_spaces_loads(tmp_path):
    root = png_site(tmp_path / "site", LABELS)
    rows = [f'"img{k}.png", "{CLASSES[v]}"' for k, v in enumerate(LABELS)]
    text = "\r\n".join(["Path, Label", *rows]) + "\r\n"
    (root / "labels.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    site = load_data_spec(write_spec(tmp_path / "s.yaml", root="site", classes=CLASSES))
    assert site.n_train + len(site.test_y) == len(LABELS)
    for x, y in zip(site.train_x, site.train_y, strict=True):
        assert read_mark(x)[1] == y


@pytest.mark.parametrize("spelling", ["img3.png", "./img3.png", "sub/../img3.png"])
def test_an_image_listed_twice_is_refused_naming_both_lines(tmp_path, spelling):
    """A repeated row could put one image in both train and test (or give it two labels)."""
    root = png_site(tmp_path / "site", LABELS)
    (root / "sub").mkdir()
    rows = [(f"img{k}.png", str(v)) for k, v in enumerate(LABELS)]
    write_csv(root / "labels.csv", "path,label", [*rows, (spelling, "0")])
    with pytest.raises(DataError) as info:
        load_data_spec(write_spec(tmp_path / "s.yaml", root="site", classes=CLASSES))
    message = str(info.value)
    assert "labels.csv: line 12" in message and "line 5" in message and "img3.png" in message


def test_the_split_does_not_depend_on_the_csv_row_order(tmp_path):
    """The same rows in another order (a re-export, a sort) give the same test images; the
    split is pinned so that another machine or numpy version gives it too."""
    labels = [0] * 12 + [1] * 8
    root = png_site(tmp_path / "site", labels)
    spec = write_spec(tmp_path / "s.yaml", root="site", classes=CLASSES, test_fraction=0.25)
    train, test = _marks(load_data_spec(spec))
    assert test == [1, 6, 7, 13, 19]  # 3 of class 0 (0..11), 2 of class 1, with seed 0
    rows = [(f"img{k}.png", str(v)) for k, v in enumerate(labels)]
    for seed in range(3):
        random.Random(seed).shuffle(rows)
        write_csv(root / "labels.csv", "path,label", rows)
        assert _marks(load_data_spec(spec)) == (train, test)


def test_a_file_replaced_with_the_same_size_and_mtime_is_read_again(tmp_path):
    """A re-export copied over with its times kept (``cp -p``, ``rsync -a``): same size, same
    modification time, other pixels. The cache must not serve the old pixels."""
    from PIL import Image

    root = tmp_path / "site"
    root.mkdir()
    for k, label in enumerate(LABELS):
        Image.fromarray(marked(k, label)).save(root / f"img{k}.bmp")  # uncompressed: one size
    write_csv(root / "labels.csv", "path,label", [(f"img{k}.bmp", "0") for k in range(10)])
    spec = write_spec(tmp_path / "s.yaml", root="site", classes=CLASSES, cache="cache")
    load_data_spec(spec)
    target = root / "img0.bmp"
    for in_place in (False, True):
        before = target.stat()
        changed = marked(0, LABELS[0])
        changed[2, 2] = 7 if in_place else 9
        if in_place:
            time.sleep(0.05)  # past the file system's timestamp tick
            Image.fromarray(changed).save(target)
        else:
            Image.fromarray(changed).save(tmp_path / "new.bmp")
            os.replace(tmp_path / "new.bmp", target)
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert target.stat().st_size == before.st_size
        site = load_data_spec(spec)
        x = np.concatenate([site.train_x, site.test_x])
        (first,) = [i for i in x if read_mark(i)[0] == 0]
        assert round(float(first[0, 2, 2]) * 250) == changed[2, 2]


def _load_into(spec, start: threading.Barrier, sites: list, errors: list) -> None:
    start.wait()
    try:
        sites.append(load_data_spec(spec))
    except DataError as exc:
        errors.append(exc)


def test_concurrent_loads_of_one_spec_share_its_cache_without_failing(tmp_path):
    """Processes (here threads) that load one site at once all succeed and leave one cache."""
    png_site(tmp_path / "site", LABELS)
    spec = write_spec(
        tmp_path / "s.yaml", root="site", classes=CLASSES, size=[128, 128], cache="cache"
    )
    expected = load_data_spec(spec)
    for _ in range(20):
        shutil.rmtree(tmp_path / "cache")
        start, sites, errors = threading.Barrier(4), [], []
        threads = [
            threading.Thread(target=_load_into, args=(spec, start, sites, errors)) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        (cached,) = (tmp_path / "cache").iterdir()  # one cache, no part file left
        assert cached.suffix == ".npz"
        for site in sites:
            np.testing.assert_array_equal(site.train_x, expected.train_x)


def _dicom_folder(root, series: list[str], numbers: list[int]) -> None:
    root.mkdir(parents=True)
    for z, (uid, number) in enumerate(zip(series, numbers, strict=True)):
        write_dicom(root / f"s{z}.dcm", marked(z, 0).astype(np.uint16), number, series_uid=uid)


@pytest.mark.parametrize(
    ("series", "numbers", "piece"),
    [
        (["1.2.3"] * 2 + ["1.2.4"] * 2, [0, 1, 0, 1], "2 DICOM series"),
        (["1.2.3"] * 3, [0, 1, 1], "InstanceNumber 2 twice"),
    ],
    ids=["two-series", "repeated-instance"],
)
def test_a_dicom_folder_must_hold_one_ordered_series(tmp_path, series, numbers, piece):
    """A study folder with a second series (a localizer) would be stacked into one volume."""
    root = tmp_path / "site"
    for k in range(4):
        _dicom_folder(root / f"case{k}", ["9.9"] * 3, [0, 1, 2])
    _dicom_folder(root / "case4", series, numbers)
    write_csv(root / "labels.csv", "path,label", [(f"case{k}", str(k % 2)) for k in range(5)])
    spec = write_spec(tmp_path / "s.yaml", root="site", classes=CLASSES, volumes="middle-slice")
    with pytest.raises(DataError, match=f"case4: .*{piece}"):
        load_data_spec(spec)


def test_a_link_leaving_the_root_is_refused_naming_where_it_points(tmp_path):
    """A site's folder may hold links inside itself; one to another site's data is refused,
    also as a file of a DICOM series folder."""
    root = png_site(tmp_path / "site", LABELS)
    other = png_site(tmp_path / "other", LABELS)
    (root / "img2.png").unlink()
    (root / "img2.png").symlink_to(other / "img2.png")
    spec = write_spec(tmp_path / "s.yaml", root="site", classes=CLASSES)
    with pytest.raises(DataError, match=r"line 4: .*img2\.png.* links to .*other/img2\.png"):
        load_data_spec(spec)
    shutil.copy(other / "img2.png", root / "real2.png")
    (root / "img2.png").unlink()
    (root / "img2.png").symlink_to(root / "real2.png")  # inside the root: fine
    assert load_data_spec(spec).n_train == 8

    _dicom_folder(root / "case", ["9.9"] * 3, [0, 1, 2])
    write_dicom(other / "s.dcm", marked(0, 0).astype(np.uint16), 1, series_uid="9.9")
    (root / "case" / "s1.dcm").unlink()
    (root / "case" / "s1.dcm").symlink_to(other / "s.dcm")
    rows = [(f"img{k}.png", str(v)) for k, v in enumerate(LABELS)]
    write_csv(root / "labels.csv", "path,label", [*rows, ("case", "0")])
    with pytest.raises(DataError, match=r"line 12: .*case/s1\.dcm.* links to .*other/s\.dcm"):
        load_data_spec(spec)


def test_a_missing_root_and_extra_csv_columns_say_what_to_fix(tmp_path):
    """The docs' example copied as is (root: /data/ultrasound/), and a CSV with a patient
    column: each message names the problem itself."""
    spec = write_spec(tmp_path / "s.yaml", root="nowhere/", classes=CLASSES)
    with pytest.raises(DataError, match=r"nowhere: no such folder; fix root: in the spec"):
        load_data_spec(spec)
    root = png_site(tmp_path / "nowhere", LABELS)
    rows = [f"img{k}.png,{v},p{k}" for k, v in enumerate(LABELS)]
    (root / "labels.csv").write_text("\n".join(["path,label,patient", *rows]) + "\n")
    with pytest.raises(DataError, match=r"line 1: .*path,label, and its rows have those two"):
        load_data_spec(spec)


def test_16_bit_pngs_with_upper_case_suffixes_keep_their_levels(tmp_path):
    """A 16-bit PNG (``.PNG``, as some scanners name them) through a fixed window: its true
    levels, not 8-bit ones."""
    from PIL import Image

    root = tmp_path / "site"
    root.mkdir()
    for k, label in enumerate(LABELS):
        Image.fromarray(marked(k, label).astype(np.uint16) * 200).save(root / f"IMG{k}.PNG")
    write_csv(
        root / "labels.csv", "path,label", [(f"IMG{k}.PNG", str(v)) for k, v in enumerate(LABELS)]
    )
    spec = write_spec(tmp_path / "s.yaml", root="site", classes=CLASSES, intensity=[0, 50000])
    site = load_data_spec(spec)
    for x in site.train_x:
        k, label = read_mark(x)
        np.testing.assert_allclose(x[0], marked(k, label) / 250, atol=1e-6)  # 200 * v / 50000


def test_a_cache_that_cannot_be_written_is_named_and_leaves_nothing(tmp_path):
    png_site(tmp_path / "site", LABELS)
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    spec = write_spec(tmp_path / "s.yaml", root="site", classes=CLASSES, cache="cache")
    with pytest.raises(DataError, match=r"cache/s-[0-9a-f]{24}\.npz: cannot write the cache"):
        load_data_spec(spec)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "s.yaml", "site"]


def test_the_cache_follows_a_changed_label_and_a_changed_preparation(tmp_path):
    root = png_site(tmp_path / "site", LABELS)
    spec = tmp_path / "s.yaml"

    def load(**keys):
        site = load_data_spec(write_spec(spec, root="site", classes=CLASSES, cache="c", **keys))
        x = np.concatenate([site.train_x, site.test_x])
        y = np.concatenate([site.train_y, site.test_y])
        return x, {read_mark(i)[0]: int(v) for i, v in zip(x, y, strict=True)}

    x, labels = load()
    assert labels[3] == 1
    rows = [(f"img{k}.png", str(1 - v if k == 3 else v)) for k, v in enumerate(LABELS)]
    write_csv(root / "labels.csv", "path,label", rows)
    assert load()[1][3] == 0  # the changed label, not the cached one
    assert load(size=[12, 10])[0].shape[2:] == (12, 10)
    window, _ = load(intensity=[0, 500])
    assert window.max() == pytest.approx(0.5) and x.max() == 1.0
    assert len(list((tmp_path / "c").iterdir())) == 1  # each new key replaced the old cache
