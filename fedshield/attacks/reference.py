"""Reference levels a reconstruction must beat to show a leak, each scored exactly like it.

A reconstruction's score is the PSNR of its Hungarian match to the true images
(:func:`~fedshield.attacks.scores.match`): with one reconstruction against ``k`` truths that is
the best of ``k``, and an attack returning a smooth, average-looking image scores above a
random unrelated image without knowing anything of the victims. So every reference here goes
through the same :func:`match` against the same truths:

- **victim-absent control** (the verdict's reference): the same round (same protocol, sites,
  batch and labels) with the sites holding *other* training images of the victims' labels, the
  same attack on what the server sees, the reconstruction scored against the *victims*. It is
  what the attack reaches from the protocol's view when the victims' data is not in it; an
  attack that scores no better than it (within its spread over draws) shows nothing of them;
- **unrelated images**: ``count`` test-split images matched to the truths, over disjoint draws;
- **dataset mean**: the training set's mean image (``count`` copies) matched to the truths.

The verdict: ``leaks`` when the attack's PSNR exceeds the control's mean by more than
``margin = max(2 x the control's standard deviation over draws, MIN_MARGIN_DB)``, else
``at reference``.
"""

from __future__ import annotations

import numpy as np

from fedshield._validate import check_int
from fedshield.attacks.scenarios import BenchPreset, RoundSpec, run_round
from fedshield.attacks.scores import match
from fedshield.errors import ConfigError

__all__ = [
    "MIN_MARGIN_DB",
    "add_references",
    "control_indices",
    "level",
    "matched_mean_image",
    "matched_unrelated",
    "verdict",
]

MIN_MARGIN_DB = 0.5  # the margin's floor: a spread from few draws can come out near zero


def level(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value) and the values themselves."""
    if not values:
        raise ConfigError("a reference level needs at least one value")
    array = np.asarray(values, np.float64)
    sd = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return {"psnr": float(array.mean()), "sd": sd, "values": [float(v) for v in array]}


def _mean_psnr(candidates: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    pairs = match(candidates, truth)
    return (float(np.mean([p["psnr"] for p in pairs])), float(np.mean([p["ssim"] for p in pairs])))


def matched_unrelated(truth: np.ndarray, pool: np.ndarray, *, count: int, draws: int = 8) -> dict:
    """``count`` unrelated images (disjoint slices of ``pool``, which must not hold the truths)
    matched to ``truth`` as a reconstruction of ``count`` images would be, over ``draws``."""
    check_int("count", count, low=1, error=ConfigError)
    check_int("draws", draws, low=1, error=ConfigError)
    if len(pool) < count * draws:
        raise ConfigError(f"the unrelated pool needs {count * draws} images, has {len(pool)}")
    scores = [_mean_psnr(pool[d * count : (d + 1) * count], truth) for d in range(draws)]
    out = level([s[0] for s in scores])
    return {**out, "ssim": float(np.mean([s[1] for s in scores])), "draws": draws}


def matched_mean_image(truth: np.ndarray, images: np.ndarray, *, count: int) -> dict:
    """The dataset's mean image (over ``images``), ``count`` copies matched to ``truth``: what
    an attacker knowing only the dataset's average would return."""
    check_int("count", count, low=1, error=ConfigError)
    mean = np.repeat(np.asarray(images, np.float64).mean(axis=0, keepdims=True), count, axis=0)
    psnr, ssim = _mean_psnr(mean, truth)
    return {"psnr": psnr, "ssim": ssim}


def control_indices(labels: np.ndarray, victims: np.ndarray, draws: int) -> list[np.ndarray]:
    """For each of ``draws`` controls, one training index per victim, of the victim's label,
    never a victim and never used by another draw (so every control holds other images).

    Raises:
        ConfigError: too few images of some label for that many draws.
    """
    check_int("draws", draws, low=1, error=ConfigError)
    labels, victims = np.asarray(labels).reshape(-1), np.asarray(victims, np.int64)
    free = np.setdiff1d(np.arange(len(labels)), victims)
    queues = {int(c): list(free[labels[free] == c]) for c in np.unique(labels[victims])}
    out = []
    for _ in range(draws):
        picked = []
        for v in victims:
            queue = queues[int(labels[v])]
            if not queue:
                raise ConfigError(f"too few images of label {int(labels[v])} for {draws} draws")
            picked.append(queue.pop(0))
        out.append(np.array(picked, np.int64))
    return out


def verdict(psnr: float, control: dict) -> dict:
    """``leaks`` when ``psnr`` exceeds the control's mean by more than the margin (twice the
    control's spread over draws, at least :data:`MIN_MARGIN_DB`), else ``at reference``."""
    margin = max(2.0 * control["sd"], MIN_MARGIN_DB)
    gain = psnr - control["psnr"]
    return {"verdict": "leaks" if gain > margin else "at reference", "gain_db": float(gain),
            "margin_db": float(margin)}  # fmt: skip


def add_references(
    spec: RoundSpec, preset: BenchPreset, images: np.ndarray, labels: np.ndarray,
    pool: np.ndarray, rows: list[dict],
) -> list[dict]:  # fmt: skip
    """Give each row of ``run_round(spec, ...)`` its reference levels (``references``) and,
    when ``spec.control``, the victim-absent control over ``preset.control_draws`` rounds
    and the verdict (``verdict``, ``gain_db``, ``margin_db``). Returns ``rows``."""
    victims = np.arange(spec.sites * spec.per_site)
    draws = []
    if spec.control:
        for chosen in control_indices(labels, victims, preset.control_draws):
            draws.append(run_round(spec, preset, images, labels, pool, chosen=chosen))
    others = np.delete(images, victims, axis=0)  # the dataset's mean, victims left out
    for k, row in enumerate(rows):
        truth, count = row["_images"][0], row["images"]
        references = {
            "unrelated_matched": matched_unrelated(
                truth, pool, count=count, draws=min(8, len(pool) // count)
            ),
            "dataset_mean": matched_mean_image(truth, others, count=count),
        }
        if draws:
            control = level([draw[k]["psnr_mean"] for draw in draws])
            control["ssim"] = float(np.mean([draw[k]["ssim_mean"] for draw in draws]))
            control["seconds"] = float(sum(draw[k]["seconds"] for draw in draws))
            references["control"] = control
            row.update(verdict(row["psnr_mean"], control))
        row["references"] = references
    return rows
