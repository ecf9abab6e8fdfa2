"""Malformed site folders and data specs: each gives a typed error naming the file (and the
CSV line) and what to fix, never a wrong result."""

from __future__ import annotations

import re

import numpy as np
import pytest
from image_folders import marked, nifti_site, png_site, write_csv, write_spec

from fedshield.data import load_data_spec, load_site_specs
from fedshield.errors import ConfigError, DataError

LABELS = [0, 1, 0, 1, 0, 1]
CLASSES = ["benign", "malignant"]


@pytest.fixture
def site(tmp_path):
    """A sound PNG folder ``site/`` and its spec ``s.yaml``."""
    png_site(tmp_path / "site", LABELS)
    return write_spec(tmp_path / "s.yaml", root="site", classes=CLASSES)


def _rows(site, rows, header="path,label"):
    write_csv(site.parent / "site" / "labels.csv", header, rows)


def _good_rows() -> list[tuple[str, str]]:
    return [(f"img{k}.png", str(v)) for k, v in enumerate(LABELS)]


def _raises(spec, error, *pieces):
    with pytest.raises(error) as info:
        load_data_spec(spec)
    for piece in pieces:
        assert piece in str(info.value), (piece, str(info.value))
    return str(info.value)


def test_a_missing_image_names_the_csv_line_and_the_path(site):
    _rows(site, [*_good_rows()[:2], ("gone.png", "1"), *_good_rows()[2:]])
    _raises(site, DataError, "labels.csv: line 4", "gone.png: no such file")


def test_an_unreadable_image_is_named(site):
    (site.parent / "site" / "img2.png").write_bytes(b"not a png at all")
    _raises(site, DataError, "img2.png: cannot read it as pil", "replace or remove")


def test_corrupt_nifti_and_dicom_files_are_named(tmp_path):
    root = nifti_site(tmp_path / "n", LABELS)
    (root / "img3.nii.gz").write_bytes(b"\x1f\x8b garbage")
    _raises(write_spec(tmp_path / "n.yaml", root="n", classes=CLASSES), DataError, "img3.nii.gz")
    (root / "bad.dcm").write_bytes(b"DICM? no")
    write_csv(root / "labels.csv", "path,label", [("img0.nii.gz", "0"), ("bad.dcm", "1")])
    _raises(tmp_path / "n.yaml", DataError, "bad.dcm: cannot read it as dicom")


def test_a_label_outside_the_class_list_names_the_line(site):
    rows = _good_rows()
    rows[4] = ("img4.png", "malign")
    _rows(site, rows)
    _raises(site, DataError, "labels.csv: line 6", "'malign' is not in the spec's classes")
    rows[4] = ("img4.png", "2")  # an index past the list
    _rows(site, rows)
    _raises(site, DataError, "line 6", "label '2'")


def test_mixed_shapes_without_a_size_name_both_files(site):
    from PIL import Image

    Image.fromarray(marked(3, 1, height=7)).save(site.parent / "site" / "img3.png")
    message = _raises(site, DataError, "img3.png: shape (7, 5) differs from", "size: [height")
    assert "img0.png" in message
    write_spec(site, root="site", classes=CLASSES, size=[8, 8])  # a size resolves it
    assert load_data_spec(site).train_x.shape[1:] == (1, 8, 8)


def test_another_channel_count_than_the_spec_is_refused(site):
    from PIL import Image

    Image.fromarray(np.stack([marked(1, 1)] * 3, axis=-1)).save(site.parent / "site" / "img1.png")
    _raises(site, DataError, "img1.png: 3 channel(s)", "channels: 1")


def test_a_volume_needs_the_spec_to_say_how_to_slice_it(tmp_path):
    nifti_site(tmp_path / "v", LABELS, depth=4)
    _raises(
        write_spec(tmp_path / "v.yaml", root="v", classes=CLASSES),
        DataError, "img0.nii.gz: a 3-D volume", "volumes: middle-slice",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("content", "pieces"),
    [
        ("", ["labels.csv: empty", "path,label"]),
        ("path,label\n", ["no rows after the header"]),
        ("file,class\nimg0.png,0\n", ["line 1: header 'file,class'", "path,label"]),
        ("image,mask\nimg0.png,img1.png\n", ["set task: segmentation"]),
        ("path,label\nimg0.png,0,extra\n", ["line 2: 3 fields"]),
        ("path,label\n/etc/passwd,0\n", ["line 2", "must be relative to the root"]),
        ("path,label\n../s.yaml,0\n", ["line 2", "leaves the root"]),
    ],
    ids=["empty", "header-only", "bad-header", "other-task", "fields", "absolute", "escape"],
)
def test_a_malformed_csv_is_named_with_the_fix(site, content, pieces):
    (site.parent / "site" / "labels.csv").write_text(content)
    _raises(site, DataError, *pieces)


def test_a_missing_csv_and_too_few_images_are_named(site, tmp_path):
    _rows(site, [("img0.png", "0")])
    _raises(site, DataError, "labels.csv: 1 images cannot be split")
    (site.parent / "site" / "labels.csv").unlink()
    _raises(site, DataError, "labels.csv: no such file")


def test_masks_must_hold_class_indices_and_their_images_shape(tmp_path):
    from PIL import Image

    root = png_site(tmp_path / "site", LABELS)
    Image.fromarray(np.where(marked(0, 0) > 99, 255, 0).astype(np.uint8)).save(root / "m0.png")
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(root / "m1.png")
    spec = write_spec(tmp_path / "seg.yaml", root="site", labels="p.csv", task="segmentation")
    write_csv(root / "p.csv", "image,mask", [("img0.png", "m0.png"), ("img1.png", "m1.png")])
    _raises(spec, DataError, "m0.png: mask values 255 are", "0..1")
    write_csv(root / "p.csv", "image,mask", [("img1.png", "m1.png"), ("img0.png", "m0.png")])
    _raises(spec, DataError, "m1.png: mask of shape (1, 3, 3) for image", "img1.png")


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("root: site\nclasses: [a, b]\nsize: 64\n", ["size must be [height, width]", "64"]),
        ("root: site\nclasses: [a, b]\ncolour: rgb\n", ["unknown key(s) colour", "known:"]),
        ("classes: [a, b]\n", ["missing key 'root'"]),
        ("root: site\n", ["missing key 'classes'"]),
        ("root: site\nclasses: [no, yes]\n", ["classes must be a list of names", "quote"]),
        ("root: site\nclasses: [a, a]\n", ["lists a name twice"]),
        ("root: site\nclasses: [a]\n", ["at least two names"]),
        ("root: site\nclasses: [a, b]\ntest_fraction: 1.5\n", ["test_fraction must be"]),
        ("root: site\nclasses: [a, b]\nchannels: 2\n", ["channels must be 1 or 3"]),
        ("root: site\nclasses: [a, b]\nintensity: [3, 1]\n", ["intensity must be"]),
        ("root: site\nclasses: [a, b]\nvolumes: all\n", ["volumes must be refuse or"]),
        ("root: [site\n", ["not valid YAML/JSON"]),
        ("- root\n", ["must be a mapping"]),
    ],
)
def test_a_bad_spec_is_a_config_error_naming_the_spec_and_key(tmp_path, text, pieces):
    (tmp_path / "bad.yaml").write_text(text)
    message = _raises(tmp_path / "bad.yaml", ConfigError, *pieces)
    assert message.startswith(f"data spec {tmp_path / 'bad.yaml'}: ")
    assert not isinstance(ConfigError(message), DataError)


def test_a_missing_spec_file_is_named(tmp_path):
    _raises(tmp_path / "nowhere.yaml", ConfigError, "nowhere.yaml: cannot read it")


def test_the_sites_of_a_run_must_agree(tmp_path):
    png_site(tmp_path / "site", LABELS)
    a = write_spec(tmp_path / "a.yaml", root="site", classes=CLASSES)
    b = write_spec(tmp_path / "b.yaml", root="site", classes=["malignant", "benign"])
    with pytest.raises(ConfigError, match="list other classes"):
        load_site_specs([a, b])
    b = write_spec(tmp_path / "b.yaml", root="site", classes=CLASSES, size=[8, 8])
    with pytest.raises(ConfigError, match=re.escape("differ in (channels, H, W)")):
        load_site_specs([a, b])
    with pytest.raises(ConfigError, match="each site needs its own"):
        load_site_specs(
            [a, write_spec(tmp_path / "c.yaml", root="site", classes=CLASSES, name="a")]
        )
    with pytest.raises(ConfigError, match="run with --task classification"):
        load_site_specs([a], task="segmentation")
    with pytest.raises(ConfigError, match=r"classes is 3, but data spec.*leave --classes out"):
        load_site_specs([a], classes=3)
    with pytest.raises(ConfigError, match=r"classes is 3, but .*list the federation's classes"):
        load_site_specs([a, b], classes=3, only=0)  # a deployment's site process
    with pytest.raises(ConfigError, match=r"only must be a site index in 0\.\.1"):
        load_site_specs([a, b], only=2)
