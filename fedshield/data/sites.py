"""The unit of data in a federation: one site's train and test images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SiteData"]


@dataclass(frozen=True)
class SiteData:
    """One site's images ``(N, C, H, W)`` float32 in about [0, 1] and int64 labels ``(N,)``."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    def __post_init__(self) -> None:
        for x, y in ((self.train_x, self.train_y), (self.test_x, self.test_y)):
            if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
                raise ValueError(f"site {self.name}: images (N,C,H,W) and labels (N,) must match")

    @property
    def n_train(self) -> int:
        """Number of training samples (the site's FedAvg weight)."""
        return len(self.train_y)
