"""Segmentation ``.npz`` files, read from a path (never downloaded), and their sites.

Keys ``train_images``, ``train_masks``, ``test_images``, ``test_masks`` (a ``val`` split, if
present, is ignored). Images ``(N, H, W)`` or ``(N, H, W, C)`` as in MedMNIST (``uint8`` is
scaled to [0, 1]); masks ``(N, H, W)`` or ``(N, H, W, 1)`` of 0 (background) and 1 (lesion),
integer or bool.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fedshield.data.medmnist import channel_first, read_npz, unit_range
from fedshield.data.partition import iid_partition
from fedshield.data.sites import SiteData, deal_sites
from fedshield.errors import ConfigError, DataError

__all__ = ["load_segmentation", "segmentation_sites"]

_SPLITS = ("train", "test")


def load_segmentation(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images, masks), "test": ...}`` of a segmentation ``.npz``: images
    ``(N, C, H, W)`` float32, masks ``(N, 1, H, W)`` int64 in {0, 1}.

    Raises:
        DataError: the file is missing or not an npz, lacks a key, or has shapes or mask values
            that do not fit (the message names the key and what it should hold).
    """
    path = Path(path)
    arrays = read_npz(path, "segmentation")
    out = {}
    for split in _SPLITS:
        for key in (f"{split}_images", f"{split}_masks"):
            if key not in arrays:
                raise DataError(
                    f"{path}: missing key {key!r} (has {sorted(arrays)}); a segmentation file "
                    "holds train_images, train_masks, test_images and test_masks"
                )
        out[split] = _prepare(path, split, arrays[f"{split}_images"], arrays[f"{split}_masks"])
    return out


def _prepare(path: Path, split: str, images: np.ndarray, masks: np.ndarray):
    images = channel_first(path, split, images)
    if masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    if masks.ndim != 3 or masks.shape != (len(images), *images.shape[2:]):
        raise DataError(
            f"{path}: {split}_masks has shape {masks.shape}; expected (N, H, W) = "
            f"{(len(images), *images.shape[2:])}, one mask per image of its size"
        )
    if not (masks.dtype == bool or np.issubdtype(masks.dtype, np.integer)):
        raise DataError(f"{path}: {split}_masks must be integer or bool, got {masks.dtype}")
    values = np.unique(masks)
    if not np.isin(values, (0, 1)).all():
        raise DataError(
            f"{path}: {split}_masks must be binary (0 background, 1 lesion); found values "
            f"{values[:8].tolist()}"
        )
    if not (np.issubdtype(images.dtype, np.number) and np.isfinite(images).all()):
        raise DataError(f"{path}: {split}_images must be finite numbers")
    return unit_range(images), masks[:, None].astype(np.int64)


def segmentation_sites(
    path: str | os.PathLike,
    n_sites: int,
    *,
    partition: str = "iid",
    shift: bool = False,
    seed: int = 0,
    only: int | None = None,
) -> list[SiteData]:
    """The sites of a segmentation ``.npz``: its train and test images dealt IID over
    ``n_sites`` sites; ``shift``: each site's acquisition shift on its images (masks unchanged:
    the shift changes intensities, not geometry); ``only``: that site alone.

    Raises:
        ConfigError: label-skew partitioning asked for (masks have no class label to skew),
            or more sites than images.
        DataError: a bad file (:func:`load_segmentation`).
    """
    if partition != "iid":
        raise ConfigError(
            f"--partition {partition}: segmentation masks have no class label to skew; use iid"
        )
    splits = load_segmentation(path)
    train_y, test_y = splits["train"][1], splits["test"][1]
    most = min(len(train_y), len(test_y))
    if n_sites > most:
        raise ConfigError(
            f"{path}: {len(train_y)} training and {len(test_y)} test images cannot be split "
            f"over {n_sites} sites; use at most {most} sites"
        )
    parts = (iid_partition(np.arange(len(train_y)), n_sites, seed=seed),
             iid_partition(np.arange(len(test_y)), n_sites, seed=seed + 1))  # fmt: skip
    return deal_sites(splits["train"], splits["test"], parts, shift=shift, seed=seed, only=only)
