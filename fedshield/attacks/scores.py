"""How close a reconstruction is: PSNR, SSIM (MONAI's ``SSIMMetric``), Hungarian matching of a
batch to the true images, and the reference level of an unrelated image."""

from __future__ import annotations

import numpy as np
import torch

from fedshield.errors import ConfigError

__all__ = ["match", "psnr", "ssim", "unrelated_level"]


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 3:
        raise ConfigError(f"compare two (C, H, W) images of one shape, got {a.shape}, {b.shape}")
    return np.clip(a, 0.0, 1.0), np.clip(b, 0.0, 1.0)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two ``(C, H, W)`` images in [0, 1] (peak 1)."""
    a, b = _pair(a, b)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity (Wang et al., IEEE TIP 2004) of two ``(C, H, W)`` images in [0, 1],
    by MONAI's ``SSIMMetric`` (Gaussian window of 7 pixels, or the image's side if smaller)."""
    from monai.metrics import SSIMMetric

    a, b = _pair(a, b)
    side = min(a.shape[1:])
    window = min(7, side if side % 2 else side - 1)
    metric = SSIMMetric(spatial_dims=2, data_range=1.0, win_size=window)
    value = metric(torch.from_numpy(a[None]).float(), torch.from_numpy(b[None]).float())
    return float(value.mean())


def match(recon: np.ndarray, truth: np.ndarray) -> list[dict]:
    """Pair each reconstructed image with a distinct true image (Hungarian assignment,
    ``scipy.optimize.linear_sum_assignment``, on PSNR); one ``{recon, truth, psnr, ssim}``
    per pair. ``recon`` and ``truth`` are ``(N, C, H, W)``; the counts may differ."""
    from scipy.optimize import linear_sum_assignment

    if len(recon) == 0 or len(truth) == 0:
        raise ConfigError("match needs at least one reconstruction and one true image")
    gains = np.array([[min(psnr(r, t), 100.0) for t in truth] for r in recon])
    rows, cols = linear_sum_assignment(gains, maximize=True)
    return [
        {"recon": int(i), "truth": int(j), "psnr": float(gains[i, j]),
         "ssim": ssim(recon[i], truth[j])}
        for i, j in zip(rows, cols, strict=True)
    ]  # fmt: skip


def unrelated_level(truth: np.ndarray, pool: np.ndarray, *, per_image: int = 16) -> dict:
    """The attack's floor: PSNR and SSIM of each true image against ``per_image`` unrelated
    images of the same dataset (``pool``, which must not hold them), as means over pairs."""
    if len(pool) < per_image:
        raise ConfigError(f"the unrelated pool needs {per_image} images, has {len(pool)}")
    scores = [(psnr(t, u), ssim(t, u)) for t in truth for u in pool[:per_image]]
    values = np.array(scores)
    return {"psnr": float(values[:, 0].mean()), "ssim": float(values[:, 1].mean()),
            "pairs": len(scores)}  # fmt: skip
