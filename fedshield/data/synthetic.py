"""Synthetic, multi-site, medical-like images: is there a lesion or not (or, with ``classes``
``K > 2``, how large is it)? Or, for segmentation, where is it (a binary mask per image)?

Each image is a smooth tissue texture; positives carry one small bright, blurred lesion. With
``K`` classes, class 0 has no lesion and class ``k`` a lesion of radius about ``1.2 k + 1.3``
pixels (a grading task: the classes differ by size alone).
Each site images its patients with its own scanner (:mod:`fedshield.data.shift`), strong enough
that a model trained at one site loses accuracy at another. Deterministic given the seed, and
generated in well under a second per site.

A lesion's mask is the disc where its Gaussian profile reaches half its peak (the full width at
half maximum: radius ``sqrt(2 ln 2) σ ≈ 1.18 σ``). The mask is drawn from the lesion's own
geometry, before the site's scanner: the shift changes intensities (and blurs), never where the
lesion is, so the masks stay binary and exact under it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from fedshield.data.shift import apply_shift, site_shift
from fedshield.data.sites import SiteData

__all__ = ["make_synthetic_sites", "synthetic_images", "synthetic_segmentation"]

TASKS = ("classification", "segmentation")
_HALF_MAX = 2 * math.log(2)  # exp(-d² / 2σ²) >= 1/2  <=>  d² <= 2 ln 2 σ²


def synthetic_images(
    n: int, *, size: int = 28, prevalence: float = 0.5, seed: int = 0, classes: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Unshifted images ``(n, 1, size, size)`` in about [0, 1] and labels (1 = lesion; with
    ``classes > 2``, uniform over ``0..classes-1``, the lesion's size grade)."""
    images, labels, _ = _draw(n, size=size, prevalence=prevalence, seed=seed, classes=classes)
    return images, labels


def synthetic_segmentation(
    n: int, *, size: int = 28, prevalence: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Unshifted images ``(n, 1, size, size)`` and their lesion masks ``(n, 1, size, size)``
    int64 (1 inside the lesion's half-maximum disc, 0 elsewhere and on lesion-free images).

    The same random draws as :func:`synthetic_images` with two classes: with one seed, an image
    that carries a lesion there is this one, pixel for pixel. By default every image carries a
    lesion (``prevalence=1``), so that the Dice of each image measures how well it is outlined.
    """
    images, _, masks = _draw(n, size=size, prevalence=prevalence, seed=seed, classes=2)
    return images, masks


def _draw(
    n: int, *, size: int, prevalence: float, seed: int, classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, labels and lesion masks (every draw in a fixed order: the streams of
    :func:`synthetic_images` must never change)."""
    if classes < 2:
        raise ValueError(f"classes must be at least 2, got {classes}")
    g = torch.Generator().manual_seed(seed)
    if classes == 2:
        labels = (torch.rand(n, generator=g) < prevalence).long()
    else:
        labels = torch.randint(0, classes, (n,), generator=g)
    # Tissue: low-frequency noise upsampled, plus a gentle radial vignette.
    coarse = torch.rand(n, 1, size // 4, size // 4, generator=g)
    tissue = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = (size - 1) / 2
    vignette = 1 - 0.4 * (((yy - centre) ** 2 + (xx - centre) ** 2) / centre**2)
    images = 0.25 + 0.35 * tissue * vignette
    # Lesions: a blurred disc somewhere away from the border, of random radius and contrast.
    cy = torch.randint(size // 4, 3 * size // 4, (n,), generator=g).view(n, 1, 1).float()
    cx = torch.randint(size // 4, 3 * size // 4, (n,), generator=g).view(n, 1, 1).float()
    if classes == 2:
        radius = (torch.rand(n, generator=g) * 1.5 + 2.0).view(n, 1, 1)
    else:  # grade k: radius in [1.2 k + 1.0, 1.2 k + 1.6)
        radius = (torch.rand(n, generator=g) * 0.6 + 1.0 + 1.2 * labels).view(n, 1, 1)
    contrast = (torch.rand(n, generator=g) * 0.2 + 0.25).view(n, 1, 1)
    dist2 = (yy[None] - cy) ** 2 + (xx[None] - cx) ** 2
    lesion = torch.exp(-dist2 / (2 * radius**2)) * contrast
    present = (labels > 0).view(n, 1, 1, 1)
    images = images + lesion[:, None] * present
    masks = (dist2[:, None] <= _HALF_MAX * radius[:, None] ** 2) & present
    return images.float().numpy(), labels.numpy().astype(np.int64), masks.numpy().astype(np.int64)


def make_synthetic_sites(
    n_sites: int,
    *,
    train_per_site: int = 300,
    test_per_site: int = 150,
    size: int = 28,
    shift: bool = True,
    seed: int = 0,
    only: int | None = None,
    classes: int = 2,
    task: str = "classification",
) -> list[SiteData]:
    """``n_sites`` sites of synthetic images, each with its own acquisition shift (``only``:
    just that site; each site's images depend only on the seed and its index); ``classes``:
    see :func:`synthetic_images`; ``task="segmentation"``: lesion masks ``(N, 1, H, W)`` as
    the targets (:func:`synthetic_segmentation`), under the same shift of the images."""
    if n_sites < 1:
        raise ValueError("need at least one site")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    sites = []
    for s in range(n_sites) if only is None else [only]:
        n = train_per_site + test_per_site
        if task == "segmentation":
            x, y = synthetic_segmentation(n, size=size, seed=seed * 1000 + s)
        else:
            x, y = synthetic_images(n, size=size, seed=seed * 1000 + s, classes=classes)
        if shift:
            x = apply_shift(x, site_shift(s, seed), noise_seed=seed * 1000 + s)
        sites.append(
            SiteData(
                name=f"site{s}",
                train_x=x[:train_per_site],
                train_y=y[:train_per_site],
                test_x=x[train_per_site:],
                test_y=y[train_per_site:],
            )
        )
    return sites
