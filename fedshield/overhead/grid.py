"""The overhead grid: protections x update sizes x sites, each cell measured or skipped.

A cell runs unless its protection refuses it (a typed :class:`~fedshield.errors.ConfigError`:
recorded with its message) or it cannot fit the preset's time per cell: its cost is estimated
from the same protection's largest measured cell (linear in the update's size; linear in ``n``,
or quadratic where the work per round grows with ``n`` squared: Flower's server and the
threshold key setup), and a cell estimated over the budget is recorded with the estimate.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field

from fedshield.errors import ConfigError
from fedshield.overhead.measure import PROTECTIONS, measure, update_layers

__all__ = ["PRESETS", "Preset", "model_shapes", "run_grid"]

TINY_SHAPES = [(64, 1, 3, 3), (64,), (128, 64), (128,), (2, 128)]
QUADRATIC = {"flower-secagg+", "he-threshold"}


@dataclass(frozen=True)
class Preset:
    """A grid and its training: models (update shapes), site counts, seconds per cell, and the
    short training behind each protection's AUC (``auc_dataset`` ``None``: no training)."""

    name: str
    models: tuple[str, ...]
    sites: tuple[int, ...]
    cell_budget_s: float
    auc_dataset: str | None = "breastmnist"
    auc_rounds: int = 3
    auc_local_epochs: int = 1
    auc_sites: int = 4
    protections: tuple[str, ...] = field(default_factory=lambda: tuple(PROTECTIONS))


PRESETS: dict[str, Preset] = {
    "full": Preset("full", ("cnn", "unet", "densenet121"), (3, 10, 50), 300.0, auc_rounds=5,
                   auc_local_epochs=2),
    "quick": Preset("quick", ("cnn", "unet", "densenet121"), (3, 10), 60.0, auc_rounds=3),
    "tiny": Preset("tiny", ("tiny",), (2, 3), 10.0, auc_dataset="synthetic", auc_rounds=1,
                   auc_sites=3),
}  # fmt: skip


@functools.cache
def model_shapes(model: str) -> tuple[tuple[int, ...], ...]:
    """The shapes of every floating tensor of ``model``'s state dict (``tiny``: a few small
    layers, for tests). No training: the update's size is all the overhead columns need."""
    if model == "tiny":
        return tuple(TINY_SHAPES)
    from fedshield.engine.models import build_model

    net = build_model(model, in_channels=1, num_classes=2)
    return tuple(tuple(t.shape) for t in net.state_dict().values() if t.is_floating_point())


def _estimate(history: list[tuple[int, int, float]], protection: str, d: int, n: int):
    """Seconds a cell would take, from the largest measured cell of the same protection."""
    if not history:
        return None
    d_ref, n_ref, seconds = max(history, key=lambda h: h[0] * h[1])
    power = 2 if protection in QUADRATIC else 1
    return seconds * (d / d_ref) * (n / n_ref) ** power


def _cell(preset: Preset, protection: str, model: str, n: int, history: list) -> dict:
    shapes = model_shapes(model)
    d = sum(int(_prod(s)) for s in shapes)
    base = {"protection": protection, "model": model, "n": n, "values": d,
            "fp32_bytes": 4 * d}  # fmt: skip
    estimate = _estimate(history, protection, d, n)
    if estimate is not None and estimate > preset.cell_budget_s:
        reason = (f"cannot fit the time: estimated {estimate:.0f} s from a measured cell, over "
                  f"the {preset.cell_budget_s:.0f} s per cell of preset {preset.name}")  # fmt: skip
        return {**base, "status": "skipped", "reason": reason}
    try:
        row = measure(protection, update_layers(list(shapes)), n)
    except ConfigError as exc:
        return {**base, "status": "refused", "reason": str(exc)}
    except MemoryError:
        return {**base, "status": "skipped", "reason": "out of memory"}
    history.append((d, n, row["cell_s"]))
    return {**base, "status": "ok", **row}


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _warm_up(protections) -> None:
    """One tiny round of each first: imports and kernel loading stay out of the timings."""
    for protection in protections:
        with contextlib.suppress(ConfigError):  # refused again, and recorded, in the grid
            measure(protection, update_layers(TINY_SHAPES), 3)


def run_grid(preset: Preset, *, on_cell=None) -> list[dict]:
    """Every cell of ``preset``'s grid, smallest updates first and ``n`` ascending within.

    Args:
        preset: the grid.
        on_cell: called with each cell's description before it runs (a progress bar).

    Returns:
        One row per cell: ``status`` ``ok`` (with the measured columns), ``refused`` or
        ``skipped`` (with ``reason``).
    """
    models = sorted(preset.models, key=lambda m: sum(_prod(s) for s in model_shapes(m)))
    history: dict[str, list] = {p: [] for p in preset.protections}
    _warm_up(preset.protections)
    rows = []
    for model in models:
        for n in preset.sites:
            for protection in preset.protections:
                if on_cell is not None:
                    on_cell(f"{protection} / {model} / n={n}")
                rows.append(_cell(preset, protection, model, n, history[protection]))
    return rows
