"""One cell of the overhead grid: a protection, an update, ``n`` sites, one round measured.

Ours (``plain``, ``secagg``, ``he`` with shared or threshold keys) run every site's real session
through :func:`fedshield.engine.runner.run_protocol` in this process; the peers run as
:mod:`.flower_peer` (Flower's SecAgg+) and :mod:`.flare_peer` (the FLARE way) do. Every cell
reports the same columns: ``client_s`` (a site's protect time: its work in every stage, mean
over sites), ``server_s``, ``bytes_up`` / ``bytes_down`` per site (the protocol's messages
only, like for like), ``model_bytes_down`` and ``bytes_down_with_model`` (plus the model each
framework sends a site per round: :mod:`.broadcast` for ours, Flower's fit instructions, none
beside the FLARE way's encrypted sum), ``round_s`` (this process's wall time, the sites one
after another) and ``critical_s`` (a deployment's round: per stage the slowest site, plus the
server; transfers not counted).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from fedshield.errors import ConfigError

if TYPE_CHECKING:
    from fedshield.engine.runner import StageStats
    from fedshield.protocols.registry import ProtocolSpec

__all__ = ["CLIP", "PROTECTIONS", "measure", "prepare", "stage_columns", "update_layers"]

CLIP = 0.1  # updates are drawn in [-CLIP/2, CLIP/2]; quantizing protocols clip to [-CLIP, CLIP]
PROTECTIONS: dict[str, dict] = {  # name -> (kind, options)
    "plain": {"kind": "ours", "protect": "plain"},
    "secagg": {"kind": "ours", "protect": "secagg"},
    "he-shared": {"kind": "ours", "protect": "he", "he_keys": "shared"},
    "he-threshold": {"kind": "ours", "protect": "he", "he_keys": "threshold"},
    "flower-secagg+": {"kind": "flower", "peer_of": "secagg"},
    "flare-he": {"kind": "flare", "peer_of": ("he-shared", "he-threshold")},
}


def update_layers(shapes: list[tuple[int, ...]], seed: int = 0) -> list[np.ndarray]:
    """A seeded float32 update with one array per shape (a model's floating state dict)."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(-CLIP / 2, CLIP / 2, s).astype(np.float32) for s in shapes]


def measure(protection: str, layers: list[np.ndarray], n: int) -> dict:
    """One round of ``protection`` over ``n`` sites, each sending an update shaped ``layers``.

    Raises:
        ConfigError: an unknown protection, or one that refuses this ``n`` (the message says
            why); the grid records it as refused.
    """
    if protection not in PROTECTIONS:
        raise ConfigError(f"unknown protection {protection!r}; choose from {list(PROTECTIONS)}")
    kind = PROTECTIONS[protection]["kind"]
    start = time.perf_counter()
    if kind == "ours":
        row = _ours(protection, layers, n)
    elif kind == "flower":
        row = _flower(layers, n)
    else:
        row = _flare(layers, n)
    row["cell_s"] = time.perf_counter() - start
    return row


def prepare(protection: str, n: int, dim: int) -> tuple[ProtocolSpec, dict]:
    """``protection``'s spec for ``n`` sites (ids ``0 .. n - 1``) and vectors of ``dim``
    values, enrolled and past its one-time setup (``he``: the key setup, timed as
    ``setup_s``); returns it and the sites' identities.

    Raises:
        ConfigError: not one of ours, or a protocol that refuses ``n``.
    """
    from fedshield.engine.runner import enrol, setup_protocol
    from fedshield.protocols.registry import get_protocol

    options = PROTECTIONS.get(protection, {})
    if options.get("kind") != "ours":
        raise ConfigError(f"{protection!r} is not one of fedshield's protections")
    spec = get_protocol(
        options["protect"], max_weight=1.0, clip=CLIP, he_keys=options.get("he_keys", "shared"),
        sites=n,
    )  # fmt: skip
    ids = list(range(n))
    roster, identities = enrol(spec, ids)
    spec = spec.with_roster(roster)
    start = time.perf_counter()
    spec = setup_protocol(spec, clients=ids, dim=dim, identities=identities)
    return spec, {"identities": identities, "setup_s": time.perf_counter() - start}


def stage_columns(stages: list[StageStats], ids: list[int]) -> dict:
    """A round's columns from its stages: ``client_s`` (a site's time in every stage, mean over
    ``ids``), ``server_s``, ``bytes_up`` and ``bytes_down`` per site (mean) and
    ``critical_s`` (per stage the slowest site, plus the server)."""

    def per_site(attr: str) -> float:
        return float(np.mean([sum(getattr(s, attr).get(c, 0) for s in stages) for c in ids]))

    return {
        "client_s": per_site("client_s"),
        "server_s": sum(s.server_s for s in stages),
        "bytes_up": per_site("bytes_up"),
        "bytes_down": per_site("bytes_down"),
        "critical_s": sum(max(s.client_s.values(), default=0.0) + s.server_s for s in stages),
    }


def _ours(protection: str, layers: list[np.ndarray], n: int) -> dict:
    from fedshield.engine.runner import run_protocol
    from fedshield.engine.transport import InProcessTransport
    from fedshield.overhead.broadcast import model_broadcast_bytes

    update = np.concatenate([layer.ravel() for layer in layers])
    spec, setup = prepare(protection, n, update.size)
    identities, ids = setup["identities"], list(range(n))
    clients = {
        c: spec.client(client_id=c, round=1, update=update, weight=1.0, quant_seed=c,
                       identity=identities[c])
        for c in ids
    }  # fmt: skip
    server = spec.server(round=1, clients=ids, dim=update.size)
    start = time.perf_counter()
    outcome = run_protocol(server, InProcessTransport(clients))
    round_s = time.perf_counter() - start
    if outcome.revealed is None:
        raise ConfigError(f"{protection}: the round aborted: {outcome.aborted}")
    row = stage_columns(outcome.stages, ids)
    model_bytes = model_broadcast_bytes(spec, [layer.shape for layer in layers])
    return {
        **row,
        "model_bytes_down": float(model_bytes),
        "bytes_down_with_model": row["bytes_down"] + model_bytes,
        "round_s": round_s,
        "setup_s": setup["setup_s"],
        "max_abs_error": _error(outcome.revealed, update, spec.name),
    }


def _error(revealed, update: np.ndarray, protect: str) -> float | None:
    """Max abs error of the revealed mean against the exact one (``None``: the server does
    not learn the sum, as under ``he``)."""
    total = getattr(revealed, "weighted_sum", None)
    if total is None or protect == "he":
        return None
    mean = np.asarray(total, dtype=np.float64) / float(revealed.total_weight)
    return float(np.abs(mean - update).max())


def _group(n: int) -> tuple[int, int]:
    """Flower's share-group size and threshold at ``n``, as our secagg picks them (Flower wants
    an odd group size below ``n``, or all ``n``)."""
    from fedshield.protocols.secagg.config import SecAggConfig

    config = SecAggConfig(clip=CLIP, quant_bits=8, weight_bits=0)
    k = config.degree(n)
    if (k + 1) % 2 == 0 and k + 1 != n:
        k -= 2
    holders = k + 1
    return holders, max(2, min(config.threshold_for(n), holders))


def _flower(layers: list[np.ndarray], n: int) -> dict:
    try:
        from fedshield.overhead.flower_peer import run_flower_secaggplus
    except ImportError as exc:
        raise ConfigError(
            f"Flower 1.42 is not installed ({exc}): pip install flwr==1.42.*"
        ) from None
    update = np.concatenate([layer.ravel() for layer in layers])
    holders, threshold = _group(n)
    updates = {c: update for c in range(n)}
    try:
        out = run_flower_secaggplus(
            updates, num_shares=holders, threshold=threshold, clip=CLIP, quant_bits=8
        )
    except ValueError as exc:  # Flower checks its options when the workflow is made
        raise ConfigError(f"Flower's SecAgg+ refuses n={n}: {exc}") from None
    aggregate = out.pop("aggregate")
    return {
        "client_s": out["client_s"],
        "server_s": out["server_s"],
        "bytes_up": out["bytes_up_per_client"],
        # like for like: its protocol's messages; its fit instructions carry the model too
        "bytes_down": out["bytes_down_per_client"] - out["model_bytes_down_per_client"],
        "model_bytes_down": out["model_bytes_down_per_client"],
        "bytes_down_with_model": out["bytes_down_per_client"],
        "round_s": out["round_s"],
        "critical_s": out["critical_s"],
        "setup_s": 0.0,
        "max_abs_error": float(np.abs(aggregate - update).max()),
        "num_shares": holders,
        "threshold": threshold,
    }


def _flare(layers: list[np.ndarray], n: int) -> dict:
    from fedshield.overhead.flare_peer import flare_way

    out = flare_way(layers, n)
    critical = out["encrypt_s"] + out["sum_s"] + out["decrypt_s"]
    return {
        "client_s": out["encrypt_s"] + out["decrypt_s"],
        "server_s": out["sum_s"],
        "bytes_up": float(out["bytes_up"]),
        "bytes_down": float(out["bytes_down"]),
        # the encrypted sum is the model a site decrypts and applies: nothing else comes down
        "model_bytes_down": 0.0,
        "bytes_down_with_model": float(out["bytes_down"]),
        # one site encrypts and decrypts here: the others would do the same work again
        "round_s": n * (out["encrypt_s"] + out["decrypt_s"]) + out["sum_s"],
        "critical_s": critical,
        "setup_s": 0.0,
        "max_abs_error": out["max_abs_error"],
    }
