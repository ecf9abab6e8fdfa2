"""Per-site acquisition shift: intensity scale/offset, bias field, blur and noise.

Each site gets a fixed "scanner": the same shift applies to its train and test images. The
bias field and blur are MONAI transforms; noise is Gaussian. Everything is seeded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from monai.transforms import GaussianSmooth, RandBiasField

__all__ = ["AcquisitionShift", "apply_shift", "bias_field", "site_shift"]


@dataclass(frozen=True)
class AcquisitionShift:
    """A site's acquisition characteristics."""

    scale: float = 1.0
    offset: float = 0.0
    bias: float = 0.0
    blur: float = 0.0
    noise: float = 0.0
    field_seed: int = 0

    def as_dict(self) -> dict[str, float]:
        """The shift as plain numbers (for reports)."""
        return asdict(self)


# Hand-picked, clearly different scanners for the first sites; later sites draw at random.
_PRESETS = (
    AcquisitionShift(scale=1.0, offset=0.0, bias=0.0, blur=0.0, noise=0.03),
    AcquisitionShift(scale=0.85, offset=0.08, bias=0.3, blur=1.2, noise=0.12),
    AcquisitionShift(scale=1.2, offset=-0.08, bias=0.25, blur=0.6, noise=0.06),
    AcquisitionShift(scale=0.9, offset=0.12, bias=0.4, blur=0.3, noise=0.15),
)


def site_shift(site: int, seed: int = 0) -> AcquisitionShift:
    """The acquisition shift of site number ``site``."""
    if site < len(_PRESETS):
        return replace(_PRESETS[site], field_seed=seed * 1000 + site)
    rng = np.random.default_rng([seed, site, 0x5EED])
    return AcquisitionShift(
        field_seed=seed * 1000 + site,
        scale=float(rng.uniform(0.8, 1.25)),
        offset=float(rng.uniform(-0.1, 0.15)),
        bias=float(rng.uniform(0.0, 0.4)),
        blur=float(rng.uniform(0.0, 1.2)),
        noise=float(rng.uniform(0.02, 0.15)),
    )


def apply_shift(images: np.ndarray, shift: AcquisitionShift, *, noise_seed: int) -> np.ndarray:
    """Apply ``shift`` to ``images`` of shape ``(N, 1, H, W)``; returns a new float32 array.

    The bias field depends only on the site (``shift.field_seed``); ``noise_seed`` draws the
    per-image noise, so train and test images of a site share its scanner but not its noise.
    """
    if images.size == 0:
        return images.astype(np.float32)
    x = torch.as_tensor(images[:, 0], dtype=torch.float32)  # (N, H, W): N "channels" of 2D
    if shift.blur > 0:
        x = GaussianSmooth(sigma=shift.blur)(x)
    x = torch.as_tensor(x)
    if shift.bias > 0:
        x = x * bias_field(x.shape[-2:], strength=shift.bias, seed=shift.field_seed)
    x = x * shift.scale + shift.offset
    out = x.numpy().astype(np.float32)
    if shift.noise > 0:
        rng = np.random.default_rng([noise_seed, 0x401])
        out += rng.normal(0.0, shift.noise, size=out.shape).astype(np.float32)
    return out[:, None]


def bias_field(shape: tuple[int, int], *, strength: float, seed: int) -> torch.Tensor:
    """A smooth multiplicative field with ``log`` values in ``[-strength, strength]``.

    The shape of the field is MONAI's ``RandBiasField`` (a degree-3 polynomial in ``log``
    space); its amplitude is rescaled so ``strength`` reads directly, e.g. 0.3 → ×0.74 … ×1.35.
    """
    maker = RandBiasField(degree=3, coeff_range=(0.0, 1.0), prob=1.0)
    maker.set_random_state(seed)
    log_field = torch.log(torch.as_tensor(maker(torch.ones(1, *shape)))[0])
    log_field = log_field - log_field.mean()
    return torch.exp(strength * log_field / log_field.abs().max().clamp_min(1e-12))
