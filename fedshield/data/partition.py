"""Split one data set into sites: IID, or label skew with Dirichlet(alpha) proportions.

Dirichlet label skew as in Hsu et al., "Measuring the Effects of Non-Identical Data
Distribution for Federated Visual Classification", 2019.
"""

from __future__ import annotations

import numpy as np

__all__ = ["dirichlet_partition", "iid_partition"]


def iid_partition(labels: np.ndarray, n_sites: int, *, seed: int = 0) -> list[np.ndarray]:
    """Shuffle and deal the indices into ``n_sites`` near-equal parts."""
    _check(labels, n_sites)
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, n_sites)]


def dirichlet_partition(
    labels: np.ndarray, n_sites: int, *, alpha: float, seed: int = 0, min_per_site: int = 2
) -> list[np.ndarray]:
    """For each class, split its indices across sites in Dirichlet(alpha) proportions.

    Small alpha gives strong skew. Draws again (up to 100 times) until each site holds at least
    ``min_per_site`` samples.
    """
    _check(labels, n_sites)
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    rng = np.random.default_rng(seed)
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(n_sites)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            cuts = (np.cumsum(rng.dirichlet([alpha] * n_sites))[:-1] * len(idx)).astype(int)
            for site, chunk in enumerate(np.split(idx, cuts)):
                parts[site].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_per_site:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise ValueError(
        f"could not give every one of {n_sites} sites {min_per_site} samples with alpha={alpha}; "
        "raise alpha or use fewer sites"
    )


def _check(labels: np.ndarray, n_sites: int) -> None:
    if n_sites < 1:
        raise ValueError("need at least one site")
    if len(labels) < n_sites:
        raise ValueError(f"{len(labels)} samples cannot fill {n_sites} sites")
