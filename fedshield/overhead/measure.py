"""One cell of the overhead grid: a protection, an update, ``n`` sites, one round measured.

Ours (``plain``, ``secagg``, ``he`` with shared or threshold keys) run every site's real session
through :func:`fedshield.engine.runner.run_protocol` in this process; the peers run as
:mod:`.flower_peer` (Flower's SecAgg+) and :mod:`.flare_peer` (the FLARE way) do. Every cell
reports the same columns: ``client_s`` (a site's protect time: its work in every stage, mean
over sites), ``server_s``, ``bytes_up`` / ``bytes_down`` per site, ``round_s`` (this process's
wall time, the sites one after another) and ``critical_s`` (a deployment's round: per stage the
slowest site, plus the server; transfers not counted).
"""

from __future__ import annotations

import time

import numpy as np

from fedshield.errors import ConfigError

__all__ = ["CLIP", "PROTECTIONS", "measure", "update_layers"]

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
        row = _ours(PROTECTIONS[protection], layers, n)
    elif kind == "flower":
        row = _flower(layers, n)
    else:
        row = _flare(layers, n)
    row["cell_s"] = time.perf_counter() - start
    return row


def _ours(options: dict, layers: list[np.ndarray], n: int) -> dict:
    from fedshield.engine.runner import enrol, run_protocol, setup_protocol
    from fedshield.engine.transport import InProcessTransport
    from fedshield.protocols.registry import get_protocol

    update = np.concatenate([layer.ravel() for layer in layers])
    spec = get_protocol(
        options["protect"], max_weight=1.0, clip=CLIP, he_keys=options.get("he_keys", "shared"),
        sites=n,
    )  # fmt: skip
    ids = list(range(n))
    roster, identities = enrol(spec, ids)
    spec = spec.with_roster(roster)
    setup_start = time.perf_counter()
    spec = setup_protocol(spec, clients=ids, dim=update.size, identities=identities)
    setup_s = time.perf_counter() - setup_start
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
        raise ConfigError(f"{options['protect']}: the round aborted: {outcome.aborted}")
    stages = outcome.stages
    client_s = {c: sum(s.client_s.get(c, 0.0) for s in stages) for c in ids}
    return {
        "client_s": float(np.mean(list(client_s.values()))),
        "server_s": sum(s.server_s for s in stages),
        "bytes_up": float(np.mean([sum(s.bytes_up.get(c, 0) for s in stages) for c in ids])),
        "bytes_down": float(np.mean([sum(s.bytes_down.get(c, 0) for s in stages) for c in ids])),
        "round_s": round_s,
        "critical_s": sum(max(s.client_s.values(), default=0.0) + s.server_s for s in stages),
        "setup_s": setup_s,
        "max_abs_error": _error(outcome.revealed, update, options["protect"]),
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
        "bytes_down": out["bytes_down_per_client"],
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
        # one site encrypts and decrypts here: the others would do the same work again
        "round_s": n * (out["encrypt_s"] + out["decrypt_s"]) + out["sum_s"],
        "critical_s": critical,
        "setup_s": 0.0,
        "max_abs_error": out["max_abs_error"],
    }
