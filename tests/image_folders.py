"""Tiny real image folders for the data-spec tests: PNG (PIL), NIfTI (nibabel) and DICOM
series (pydicom), each image carrying its row number and label in one pixel so a test can
check what came back, and a writer for the site's data spec."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import yaml

HEIGHT, WIDTH = 6, 5  # not square: a transposed read shows


def marked(k: int, label: int, *, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Image ``k``'s pixels (uint8 range): 0 at the top-left, 250 at the bottom-right (so
    min-max scaling divides by 250), ``10 * k + label`` at row 1, column 2 (k < 24)."""
    image = np.full((height, width), 100, dtype=np.uint8)
    image[0, 0], image[-1, -1] = 0, 250
    image[1, 2] = 10 * k + label
    return image


def read_mark(x: np.ndarray) -> tuple[int, int]:
    """The ``(k, label)`` a prepared image ``(C, H, W)`` in [0, 1] of :func:`marked` carries."""
    value = round(float(x[0, 1, 2]) * 250)
    return value // 10, value % 10


def write_csv(path: Path, header: str, rows: list[tuple[str, str]]) -> Path:
    path.write_text("\n".join([header, *(f"{a},{b}" for a, b in rows)]) + "\n")
    return path


def _index(root: Path, name: str, labels: list[int]) -> None:
    """``root/labels.csv``: ``name.format(k)`` and label of every image ``k``."""
    write_csv(
        root / "labels.csv", "path,label", [(name.format(k), str(v)) for k, v in enumerate(labels)]
    )


def write_spec(path: Path, **keys) -> Path:
    """A data spec file holding ``keys`` (YAML; ``.json`` files get JSON)."""
    import json

    if path.suffix == ".json":
        path.write_text(json.dumps(keys))
    else:
        path.write_text(yaml.safe_dump(keys))
    return path


def png_site(root: Path, labels: list[int], *, rgb: bool = False) -> Path:
    """``root/img<k>.png`` for each label and ``root/labels.csv``; the folder."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for k, label in enumerate(labels):
        pixels = marked(k, label)
        if rgb:
            pixels = np.stack([pixels] * 3, axis=-1)
        Image.fromarray(pixels).save(root / f"img{k}.png")
    write_csv(
        root / "labels.csv", "path,label", [(f"img{k}.png", str(v)) for k, v in enumerate(labels)]
    )
    return root


def nifti_site(root: Path, labels: list[int], *, depth: int = 0) -> Path:
    """``root/img<k>.nii.gz`` (2-D, or ``depth`` slices with the mark on the middle one)."""
    import nibabel as nib

    root.mkdir(parents=True, exist_ok=True)
    for k, label in enumerate(labels):
        pixels = marked(k, label).astype(np.float32)
        if depth:
            volume = np.stack([np.flipud(pixels)] * depth, axis=-1)
            volume[..., depth // 2] = pixels
            pixels = volume
        nib.save(nib.Nifti1Image(pixels, np.eye(4)), root / f"img{k}.nii.gz")
    write_csv(
        root / "labels.csv",
        "path,label",
        [(f"img{k}.nii.gz", str(v)) for k, v in enumerate(labels)],
    )
    return root


def dicom_site(root: Path, labels: list[int], *, depth: int = 4) -> Path:
    """``root/series<k>/``: one series of ``depth`` slices per image, the mark on the middle
    slice (by instance number and position), the others flipped. File names run against the
    slices' order and files are written out of order, so the reader must sort them."""
    root.mkdir(parents=True, exist_ok=True)
    for k, label in enumerate(labels):
        pixels = marked(k, label).astype(np.uint16)
        series = root / f"series{k}"
        series.mkdir()
        for z in np.random.default_rng(k).permutation(depth):
            middle = z == depth // 2
            name = f"slice{depth - 1 - z}.dcm"
            write_dicom(series / name, pixels if middle else np.flipud(pixels), int(z))
    _index(root, "series{}", labels)
    return root


def dicom_files_site(root: Path, labels: list[int]) -> Path:
    """``root/img<k>.dcm``: one single-slice DICOM file per image."""
    root.mkdir(parents=True, exist_ok=True)
    for k, label in enumerate(labels):
        write_dicom(root / f"img{k}.dcm", marked(k, label).astype(np.uint16), 0)
    _index(root, "img{}.dcm", labels)
    return root


def write_dicom(path: Path, pixels: np.ndarray, z: int, series_uid: str | None = None) -> None:
    """A valid single-frame CT DICOM file of ``pixels`` (uint16) at slice position ``z``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(path.parent)])
    ds.SeriesInstanceUID = series_uid or generate_uid(entropy_srcs=[str(path.parent), "s"])
    ds.Modality, ds.PatientID = "CT", "test"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
    ds.ImagePositionPatient = [0.0, 0.0, float(z)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.InstanceNumber = z + 1
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


_OPENED: list[list[str]] = []  # the recorders now listening (the audit hook stays installed)


def _audit(event: str, args: tuple) -> None:
    if _OPENED and event in ("open", "os.listdir", "os.scandir") and args:
        path = args[0]
        if isinstance(path, str | bytes | os.PathLike):
            for record in _OPENED:
                record.append(os.fsdecode(path))


@contextlib.contextmanager
def opened_paths():
    """Every path the process opens (files) or lists (folders) inside the ``with``, from
    Python's audit events (PEP 578), as absolute strings as given."""
    if not getattr(_audit, "installed", False):
        sys.addaudithook(_audit)
        _audit.installed = True
    record: list[str] = []
    _OPENED.append(record)
    try:
        yield record
    finally:
        _OPENED.remove(record)
