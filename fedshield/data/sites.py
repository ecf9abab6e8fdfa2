"""The unit of data in a federation: one site's train and test images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SiteData", "deal_sites"]


@dataclass(frozen=True)
class SiteData:
    """One site's images ``(N, C, H, W)`` float32 in about [0, 1] and their targets: int64
    class labels ``(N,)`` (classification) or int64 masks ``(N, 1, H, W)`` of class indices,
    0 for background (segmentation; the same layout for train and test)."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    def __post_init__(self) -> None:
        for x, y in ((self.train_x, self.train_y), (self.test_x, self.test_y)):
            if x.ndim != 4 or y.ndim not in (1, 4) or len(x) != len(y):
                raise ValueError(
                    f"site {self.name}: images (N,C,H,W) need labels (N,) or masks (N,1,H,W) of "
                    f"the same N; got images {x.shape} and targets {y.shape}"
                )
            if y.ndim == 4 and (y.shape[1] != 1 or y.shape[2:] != x.shape[2:]):
                raise ValueError(
                    f"site {self.name}: masks must be (N, 1, H, W) with the images' H and W "
                    f"{x.shape[2:]}; got {y.shape}"
                )
        if self.train_y.ndim != self.test_y.ndim:
            raise ValueError(
                f"site {self.name}: train and test targets must both be labels (N,) or both "
                f"masks (N,1,H,W); got {self.train_y.shape} and {self.test_y.shape}"
            )

    @property
    def n_train(self) -> int:
        """Number of training samples (the site's FedAvg weight)."""
        return len(self.train_y)

    @property
    def task(self) -> str:
        """``"segmentation"`` when the targets are masks, else ``"classification"``."""
        return "segmentation" if self.train_y.ndim == 4 else "classification"


def deal_sites(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    parts: tuple[list[np.ndarray], list[np.ndarray]],
    *,
    shift: bool,
    seed: int,
    only: int | None = None,
) -> list[SiteData]:
    """Sites ``site0``, ``site1``, ... holding the ``(images, targets)`` rows of ``train`` and
    ``test`` that ``parts`` (train and test index lists, one per site) give them; ``shift``:
    each site's acquisition shift on its images (targets unchanged); ``only``: that site alone."""
    from fedshield.data.shift import apply_shift, site_shift

    (train_x, train_y), (test_x, test_y) = train, test
    sites = []
    for s, (tr, te) in enumerate(zip(*parts, strict=True)):
        if only is not None and s != only:
            continue
        xs, xt = train_x[tr], test_x[te]
        if shift:
            scanner = site_shift(s, seed)
            xs = apply_shift(xs, scanner, noise_seed=2 * (seed * 1000 + s))
            xt = apply_shift(xt, scanner, noise_seed=2 * (seed * 1000 + s) + 1)
        sites.append(SiteData(f"site{s}", xs, train_y[tr], xt, test_y[te]))
    return sites
