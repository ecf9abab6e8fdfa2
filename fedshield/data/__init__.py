"""Offline data: synthetic multi-site images, MedMNIST and segmentation ``.npz`` files, a
site's own image folders (data specs), partitioners."""

from __future__ import annotations

from fedshield.data.folder import load_data_spec
from fedshield.data.medmnist import breastmnist_path, load_medmnist
from fedshield.data.partition import dirichlet_partition, iid_partition
from fedshield.data.segmentation import load_segmentation, segmentation_sites
from fedshield.data.shift import AcquisitionShift, apply_shift, site_shift
from fedshield.data.site_specs import load_site_specs
from fedshield.data.sites import SiteData, deal_sites
from fedshield.data.spec import DataSpec
from fedshield.data.synthetic import TASKS, make_synthetic_sites
from fedshield.errors import ConfigError

__all__ = [
    "TASKS",
    "AcquisitionShift",
    "DataSpec",
    "SiteData",
    "apply_shift",
    "breastmnist_path",
    "deal_sites",
    "dirichlet_partition",
    "iid_partition",
    "load_data_spec",
    "load_medmnist",
    "load_segmentation",
    "load_site_specs",
    "load_sites",
    "make_synthetic_sites",
    "segmentation_sites",
    "site_shift",
]


def load_sites(
    dataset: str,
    n_sites: int,
    *,
    partition: str = "iid",
    alpha: float = 0.5,
    shift: bool | None = None,
    seed: int = 0,
    only: int | None = None,
    classes: int | None = None,
    task: str = "classification",
) -> list[SiteData]:
    """Sites for ``dataset``: ``synthetic``, ``breastmnist`` or ``medmnist:PATH``; for
    ``task="segmentation"``, ``synthetic`` (lesion masks) or the path of a segmentation
    ``.npz`` (:func:`load_segmentation`).

    Args:
        only: build only this site (a deployment's site process never holds another's data);
            the list then has one element.
        partition: ``iid`` or ``dirichlet`` (label skew with ``alpha``), for MedMNIST data.
        shift: give each site its own acquisition shift; by default on for ``synthetic`` (whose
            point it is) and off for MedMNIST (already real, single-source images).
        classes: ``synthetic``'s number of classes (default 2); for a MedMNIST file, checked
            against its labels (a deployment's processes carry the file's count).
        task: ``classification`` (labels) or ``segmentation`` (masks ``(N, 1, H, W)``).
    """
    if only is not None and not (isinstance(only, int) and 0 <= only < n_sites):
        raise ConfigError(f"only must be a site index in 0..{n_sites - 1}, got {only!r}")
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; use {' or '.join(TASKS)}")
    if dataset == "synthetic":
        shift = True if shift is None else shift
        return make_synthetic_sites(n_sites, shift=shift, seed=seed, only=only, task=task,
                                    classes=2 if classes is None else classes)  # fmt: skip
    if task == "segmentation":
        return segmentation_sites(_segmentation_path(dataset), n_sites, partition=partition,
                                  shift=bool(shift), seed=seed, only=only)  # fmt: skip
    splits = load_medmnist(_medmnist_path(dataset))
    train_y, test_y = splits["train"][1], splits["test"][1]
    top = int(max(train_y.max(initial=0), test_y.max(initial=0)))
    if classes is not None and classes != max(2, top + 1):
        raise ConfigError(
            f"{dataset}'s labels run from 0 to {top}: its task has {max(2, top + 1)} classes, "
            f"not --classes {classes} (leave --classes out for a file)"
        )
    most = min(len(train_y), len(test_y))
    if n_sites > most:
        raise ConfigError(
            f"{dataset}: {len(train_y)} training and {len(test_y)} test images cannot be split "
            f"over {n_sites} sites; use at most {most} sites"
        )
    if partition == "iid":
        train_parts = iid_partition(train_y, n_sites, seed=seed)
    elif partition == "dirichlet":
        train_parts = dirichlet_partition(train_y, n_sites, alpha=alpha, seed=seed)
    else:
        raise ConfigError(f"unknown partition {partition!r}; use iid or dirichlet")
    test_parts = iid_partition(test_y, n_sites, seed=seed + 1)
    return deal_sites(splits["train"], splits["test"], (train_parts, test_parts),
                      shift=bool(shift), seed=seed, only=only)  # fmt: skip


def _medmnist_path(dataset: str):
    """The ``.npz`` a MedMNIST ``dataset`` name points to."""
    if dataset == "breastmnist":
        return breastmnist_path()
    if dataset.startswith("medmnist:"):
        return dataset.split(":", 1)[1]
    raise ConfigError(
        f"unknown dataset {dataset!r}; use synthetic, breastmnist or medmnist:/path/to/file.npz"
    )


def _segmentation_path(dataset: str) -> str:
    """The ``.npz`` a segmentation ``dataset`` names: a path, never a MedMNIST name."""
    if dataset == "breastmnist" or dataset.startswith("medmnist:"):
        raise ConfigError(
            f"--task segmentation needs masks: {dataset} is a classification data set; use "
            "--dataset synthetic or the path of a segmentation .npz (train_images, "
            "train_masks, test_images, test_masks)"
        )
    return dataset
