import os

import numpy as np
import pytest
import torch

from fedshield.data.sites import SiteData

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(1)


@pytest.fixture
def tiny_sites():
    """Three tiny random sites (fast to train), different sizes so weights matter."""
    rng = np.random.default_rng(0)
    sites = []
    for s, n in enumerate((24, 16, 32)):
        x = rng.normal(size=(n + 8, 1, 8, 8)).astype(np.float32)
        y = (x[:, 0, 2:6, 2:6].mean(axis=(1, 2)) > 0).astype(np.int64)
        sites.append(SiteData(f"site{s}", x[:n], y[:n], x[n:], y[n:]))
    return sites
