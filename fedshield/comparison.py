"""A protected run beside its plain fp32 twin: the same configuration without protection or
compression, trained once and cached, and the line that says what protection cost.

The twin keeps the data, model, algorithm, rounds, seeds and threads, and drops what belongs
to protection and compression (``--protect``, ``--quant-bits``, ``--clip``, ``--sparsify``,
``--error-feedback``) and the simulated dropouts (their schedules name protocol stages). It
runs in process. Cached under ``runs/plain-twins/<key>/result.json``; the key covers the
twin's options, the fedshield sources and the library versions, so a change of any of them
trains a new twin.
"""

from __future__ import annotations

import functools
import hashlib
import json
import statistics
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from fedshield.engine.experiment import RunConfig
from fedshield.errors import ConfigError

__all__ = [
    "TWIN_CACHE",
    "check_twin",
    "compare",
    "comparison_line",
    "load_twin",
    "plain_twin",
    "twin_config",
    "twin_path",
]

TWIN_CACHE = Path("runs") / "plain-twins"
_COMPARED = ("protect", "quant_bits", "clip", "sparsify", "error_feedback",
             "train_all_coordinates", "transport", "dropout", "dropout_schedule", "threshold",
             "neighbours")  # fmt: skip


def twin_config(config: RunConfig) -> RunConfig:
    """``config`` as plain fp32, uncompressed, in process, without dropouts."""
    return replace(
        config, protect="plain", quant_bits=None, clip=None, sparsify=None,
        error_feedback=False, train_all_coordinates=False, transport="inprocess",
        dropout=0.0, dropout_schedule={}, threshold=None, neighbours=None,
    )  # fmt: skip


def twin_path(config: RunConfig, cache: Path = TWIN_CACHE) -> Path:
    """Where the twin of ``config`` is (or will be) cached."""
    options = json.dumps(twin_config(config).as_dict(), sort_keys=True, default=str)
    key = hashlib.sha256((options + _fingerprint()).encode()).hexdigest()[:24]
    return cache / key / "result.json"


def check_twin(config: RunConfig, twin: dict) -> None:
    """Raise ``ConfigError`` unless ``twin`` (a result document) is a plain fp32 run of the
    same configuration as ``config``."""
    expected = twin_config(config).as_dict()
    given = twin.get("config", {})
    differ = sorted(k for k, v in expected.items() if k not in _COMPARED and given.get(k) != v)
    if given.get("protect") != "plain" or given.get("quant_bits") or given.get("sparsify"):
        differ.insert(0, "protect (it must be plain fp32, uncompressed)")
    if differ:
        raise ConfigError(
            "--compare-plain: the given run is not this run's plain twin; it differs in "
            + ", ".join(differ)
        )


def plain_twin(
    config: RunConfig,
    source: str,
    *,
    train: Callable[[RunConfig], dict],
    announce: Callable[[str], None],
) -> tuple[dict, Path] | None:
    """The twin's result document and where it lies: read from ``source`` (a result.json
    path, checked to be the twin), or, with ``source="cached"``, from the cache, trained with
    ``train`` (and written there) the first time. ``None`` when ``config`` is plain fp32."""
    from fedshield.report import write_run

    twin = twin_config(config)
    if twin == config:
        announce("this run is plain fp32: it is its own baseline")
        return None
    path = Path(source) if source != "cached" else twin_path(config)
    if path.exists():
        document = load_twin(config, path)
        announce(f"plain fp32 twin: {path}" + (" (cached)" if source == "cached" else ""))
    elif source != "cached":
        raise ConfigError(f"--compare-plain: {path} does not exist")
    else:
        announce(f"training the plain fp32 twin once for the comparison ({path.parent})")
        document = train(twin)
        write_run(path.parent, document)
    return document, path


def load_twin(config: RunConfig, path: Path) -> dict:
    """A plain run's result document from ``path``, checked to be ``config``'s twin (call it
    before training, so that a wrong path costs nothing)."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--compare-plain: cannot read {path} ({exc})") from None
    check_twin(config, document)
    return document


def compare(result: dict, twin: dict) -> dict:
    """What protection cost against the plain twin: final AUC (and Dice, for segmentation) and
    its gap, uplink bytes per client, and the critical path per round (medians over the rounds
    after the first, which pays one-time costs such as numba's compilation).

    The twin's critical path is rebuilt from this run's own training time plus the twin's
    protocol time (the critical path beyond its slowest site's training): both runs train
    the same model on the same data, and a cached twin trained under another load would
    otherwise skew the ratio (measured: 0.02x against a twin trained on a busy machine)."""
    rounds, plain = result["rounds"][1:] or result["rounds"], twin["rounds"][1:] or twin["rounds"]

    def training(row: dict) -> float:
        return max(row.get("site_train_s", {}).values(), default=0.0)

    uplink = statistics.median(r["bytes_up_per_client"] for r in rounds)
    plain_uplink = statistics.median(r["bytes_up_per_client"] for r in plain)
    path = statistics.median(r["critical_path_s"] for r in rounds)
    plain_protocol = statistics.median(r["critical_path_s"] - training(r) for r in plain)
    plain_path = statistics.median(training(r) for r in rounds) + plain_protocol
    dice = {}
    if "dice" in result["final"] and "dice" in twin["final"]:
        mine, theirs = result["final"]["dice"], twin["final"]["dice"]
        dice = {"dice": mine, "plain_dice": theirs, "dice_gap": mine - theirs}
    return {
        "auc": result["final"]["auc"],
        "plain_auc": twin["final"]["auc"],
        "auc_gap": result["final"]["auc"] - twin["final"]["auc"],
        **dice,
        "bytes_up_per_client": uplink,
        "plain_bytes_up_per_client": plain_uplink,
        "uplink_ratio": uplink / plain_uplink if plain_uplink else None,
        "critical_path_s": path,
        "plain_critical_path_s": plain_path,
        "critical_path_ratio": path / plain_path if plain_path > 0 else None,
    }


def comparison_line(comparison: dict) -> str:
    """One line: AUC (segmentation: Dice) against plain, uplink and critical-path ratios."""
    c = comparison
    path = c["critical_path_ratio"]
    path_text = f"critical path {path:.2f}x" if path else "critical path n/a"
    key, name = ("dice", "Dice") if "dice" in c else ("auc", "AUC")
    return (
        f"vs plain fp32 (same data, seed and rounds): {name} {c[key]:.3f} vs "
        f"{c[f'plain_{key}']:.3f} ({c[f'{key}_gap']:+.3f}), uplink {c['uplink_ratio']:.2f}x, "
        + path_text
    )


@functools.cache
def _fingerprint() -> str:
    """The fedshield sources and the versions the twin's numbers depend on."""
    import numpy
    import torch

    from fedshield import __version__

    digest = hashlib.sha256(f"{__version__} {torch.__version__} {numpy.__version__}".encode())
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()
