"""The AUC column: a short BreastMNIST training per protection, cached on disk.

Each of our protections trains the same federation (same seed, sites, rounds) in process, as
``fedshield run --threads 1`` does (:func:`fedshield.engine.experiment.build_federation`, one
torch thread: with more on a loaded machine, a site's training once took 2.5 s instead of
0.05 s, and the round's critical path with it; docs/overhead.md); the peers are
measured on one round of synthetic updates and not trained (their AUC is ``None``, with the
reason). Results are cached as JSON under ``<out>/auc-cache/``, keyed by the whole training
configuration, so a rerun into the same folder skips the training.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

from fedshield.errors import ConfigError, DataError
from fedshield.overhead.measure import PROTECTIONS

__all__ = ["PEER_NOT_TRAINED", "train_auc"]

PEER_NOT_TRAINED = (
    "a peer: measured on one round of synthetic updates with its own library; fedshield's "
    "engine does not train with it"
)


CACHE_VERSION = 2  # 2: one torch thread, per-round critical paths (older results retrain)


def _config(preset, protection: str):
    from fedshield.engine.experiment import RunConfig

    options = PROTECTIONS[protection]
    return RunConfig(
        dataset=preset.auc_dataset, sites=preset.auc_sites, rounds=preset.auc_rounds,
        local_epochs=preset.auc_local_epochs, protect=options["protect"],
        he_keys=options.get("he_keys", "shared"), seed=0, threads=1,
    )  # fmt: skip


def train_auc(preset, protection: str, cache: Path) -> dict:
    """The final test AUC of ``preset``'s short training under ``protection``.

    Returns:
        ``{"auc": float | None, "rounds": ..., "critical_path_s": ..., "seconds": ...,
        "cached": bool}``, or ``{"auc": None, "reason": ...}`` where nothing was trained
        (a peer, no data set in the preset, the data missing, or a refused configuration).
    """
    if PROTECTIONS[protection]["kind"] != "ours":
        return {"auc": None, "reason": PEER_NOT_TRAINED}
    if preset.auc_dataset is None:
        return {"auc": None, "reason": f"preset {preset.name} trains nothing"}
    try:
        config = _config(preset, protection)
    except ConfigError as exc:
        return {"auc": None, "reason": f"refused: {exc}"}
    keyed = {**asdict(config), "cache_version": CACHE_VERSION}
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"{protection}-{key}.json"
    if path.exists():
        return {**json.loads(path.read_text()), "cached": True}
    try:
        result = _train(config)
    except DataError as exc:
        return {"auc": None, "reason": f"no data: {exc}"}
    except ConfigError as exc:
        return {"auc": None, "reason": f"refused: {exc}"}
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return {**result, "cached": False}


def _train(config) -> dict:
    import torch

    from fedshield.engine.experiment import build_federation
    from fedshield.engine.reproducibility import torch_threads

    with torch_threads(config.threads) as used_threads:  # as `fedshield run --threads` does
        torch.manual_seed(config.seed)
        start = time.perf_counter()
        federation = build_federation(config)
        rows = [federation.run_round().as_dict() for _ in range(config.rounds)]
    later = rows[1:] or rows  # round 1 pays one-time compilation
    return {
        "auc": float(rows[-1]["auc"]),
        "auc_per_round": [float(r["auc"]) for r in rows],
        "dataset": config.dataset,
        "sites": config.sites,
        "rounds": config.rounds,
        "local_epochs": config.local_epochs,
        "bytes_up_per_client": float(rows[-1]["bytes_up_per_client"]),
        "critical_path_s": float(sorted(r["critical_path_s"] for r in later)[len(later) // 2]),
        # the engine's rule: the slowest site's training is part of every round's path
        "critical_path_s_per_round": [float(r["critical_path_s"]) for r in rows],
        "slowest_train_s_per_round": [max(r["site_train_s"].values()) for r in rows],
        "torch_threads": used_threads,
        "seconds": time.perf_counter() - start,
    }
