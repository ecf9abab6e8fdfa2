"""MedMNIST ``.npz`` files, read from a path (never downloaded).

Yang et al., "MedMNIST v2", Scientific Data 2023. Keys ``{train,val,test}_{images,labels}``;
labels of shape ``(N,)`` or ``(N, 1)``.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from fedshield.errors import DataError

__all__ = ["MedMNIST", "breastmnist_path", "load_medmnist"]

_SPLITS = ("train", "val", "test")


class MedMNIST(dict):
    """Splits ``{"train": (x, y), "val": ..., "test": ...}``; x is ``(N, C, H, W)`` in [0, 1]."""


def breastmnist_path() -> Path:
    """Where ``breastmnist`` is read from: ``$FEDSHIELD_DATA`` first, then ``../shared/data``.

    Raises:
        DataError: naming every place looked at, when the file is in none of them.
    """
    candidates = []
    if os.environ.get("FEDSHIELD_DATA"):
        candidates.append(Path(os.environ["FEDSHIELD_DATA"]) / "breastmnist.npz")
    candidates += [
        Path.cwd().parent / "shared" / "data" / "breastmnist.npz",
        Path(__file__).resolve().parents[3] / "shared" / "data" / "breastmnist.npz",
    ]
    for path in candidates:
        if path.is_file():
            return path
    looked = "\n  ".join(str(p) for p in dict.fromkeys(candidates))
    raise DataError(
        f"breastmnist.npz not found. Looked in:\n  {looked}\n"
        "Set FEDSHIELD_DATA to the folder holding breastmnist.npz, "
        "or pass --dataset medmnist:/path/to/file.npz."
    )


def load_medmnist(path: str | os.PathLike) -> MedMNIST:
    """Load a MedMNIST ``.npz``; images scaled to [0, 1], channel-first, labels int64 ``(N,)``.

    Raises:
        DataError: if the file is missing, not an npz, lacks a key, or has inconsistent shapes.
    """
    path = Path(path)
    arrays = read_npz(path, "MedMNIST")
    out = MedMNIST()
    for split in _SPLITS:
        for key in (f"{split}_images", f"{split}_labels"):
            if key not in arrays:
                raise DataError(f"{path}: missing key {key!r} (has {sorted(arrays)})")
        out[split] = _prepare(path, split, arrays[f"{split}_images"], arrays[f"{split}_labels"])
    return out


def _prepare(path: Path, split: str, images: np.ndarray, labels: np.ndarray):
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{path}: {split}_labels has shape {labels.shape}, expected (N,) or (N, 1)")
    images = channel_first(path, split, images)
    if len(images) != len(labels):
        raise DataError(f"{path}: {split} has {len(images)} images but {len(labels)} labels")
    if not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise DataError(f"{path}: {split}_labels must be non-negative integers")
    return unit_range(images), labels.astype(np.int64)


def read_npz(path: Path, kind: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path`` (no pickles), or a ``DataError`` saying the file
    is missing or unreadable (``kind``: what the file should be, for the message)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file. Pass the path of a {kind} .npz file.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from exc


def channel_first(path: Path, split: str, images: np.ndarray) -> np.ndarray:
    """``images`` ``(N, H, W)`` or ``(N, H, W, C)`` as ``(N, C, H, W)``, or a ``DataError``
    naming the key."""
    if images.ndim == 3:  # (N, H, W) grayscale
        return images[:, None]
    if images.ndim == 4:  # (N, H, W, C)
        return np.moveaxis(images, -1, 1)
    raise DataError(f"{path}: {split}_images has shape {images.shape}, expected (N, H, W[, C])")


def unit_range(images: np.ndarray) -> np.ndarray:
    """float32 images, uint8 ones scaled from [0, 255] to [0, 1]."""
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    return images.astype(np.float32) / scale
