"""SecAgg+: ours beside Flower 1.42's own, one round each, same process, same inputs.

Same n, d, share-group size (Flower's ``num_shares`` = our neighbours + 1, the client itself
included) and threshold; both at 8-bit quantization of updates clipped to [-clip, clip].
Each side first runs one tiny warm-up round (kernel loading, imports); headline cases report
the median of 3 rounds. Reports round wall time in one process, the critical path a deployment
would see (each stage's slowest client plus the server; the simulated transport's message
copies count for neither side), server time, mean client time, bytes uploaded
per client and the max abs error against the exact mean, and the ratios (Flower / ours).
Ours includes what security against a malicious server and malicious clients costs
(Flower's has neither): the signed keys and receive keys, the signed commitments to every
share (one signature and a Merkle tree per sender), and the consistency stage (the ``expel``
stage runs only in a round with a proven cheater: never here); each case reports the
consistency stage's critical-path seconds and the Ed25519 work per client and at the server
(``signatures``: operations counted, each timed here).
Then a sweep over n at d = 100k with 10% of the clients dropping before the masked-input
stage: server time against n.

    python benchmarks/bench_secagg.py --out runs/bench            # full (a few minutes)
    python benchmarks/bench_secagg.py --out runs/bench --quick    # seconds
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
import timeit
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flower_secaggplus import run_flower_secaggplus

from fedshield.crypto.identity import Identity, verify
from fedshield.engine.dropout import DropoutPolicy
from fedshield.engine.runner import run_protocol
from fedshield.engine.transport import InProcessTransport
from fedshield.protocols.roster import Roster
from fedshield.protocols.secagg import SecAggClient, SecAggServer
from fedshield.protocols.secagg.config import SecAggConfig

CLIP = 0.1


def _updates(n: int, d: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(n * 7919 + d)
    return {c: rng.uniform(-CLIP, CLIP, d).astype(np.float32) for c in range(n)}


@functools.cache
def _enrolled(sites: tuple[int, ...]):
    """The federation's roster and identities (made once at enrolment, not per round)."""
    return Roster.enrol(sites, min_sites=1)


def run_ours(updates, *, config: SecAggConfig, drop: set[int]) -> dict:
    _n, d = len(updates), next(iter(updates.values())).size
    roster, identities = _enrolled(tuple(updates))
    server = SecAggServer(round=0, clients=list(updates), dim=d, config=config, roster=roster)
    clients = {
        c: SecAggClient(client_id=c, round=0, update=u, weight=1.0, config=config,
                        roster=roster, identity=identities[c])
        for c, u in updates.items()
    }  # fmt: skip
    policy = DropoutPolicy(schedule={"masked_input": sorted(drop)})
    start = time.perf_counter()
    outcome = run_protocol(server, InProcessTransport(clients), dropout=policy)
    wall = time.perf_counter() - start
    revealed = outcome.revealed
    survivors = revealed.contributors
    exact = np.mean([updates[c] for c in survivors], axis=0)
    client_totals: dict[int, float] = {}
    bytes_up: dict[int, int] = {}
    stages = {}
    for stage in outcome.stages:
        for c, s in stage.client_s.items():
            client_totals[c] = client_totals.get(c, 0.0) + s
        for c, b in stage.bytes_up.items():
            bytes_up[c] = bytes_up.get(c, 0) + b
        # the stage on a deployment's critical path: the slowest client, then the server
        slowest = max(stage.client_s.values(), default=0.0)
        stages[stage.stage] = {"critical_s": slowest + stage.server_s,
                               "server_s": stage.server_s}  # fmt: skip
    return {
        "round_s": wall,
        "server_s": sum(s.server_s for s in outcome.stages),
        "client_s": float(np.mean(list(client_totals.values()))),
        "bytes_up_per_client": float(np.mean(list(bytes_up.values()))),
        "max_abs_error": float(np.abs(revealed.weighted_sum / revealed.total_weight - exact).max()),
        "stages": stages,
        # what malicious-server security adds: the consistency stage (each client signs the
        # survivor set), on top of signing and checking keys and sealed shares elsewhere
        "consistency_s": stages["consistency"]["critical_s"],
        "critical_s": sum(stage["critical_s"] for stage in stages.values()),
        "ring_bits": server.bits,
        "neighbours": server.degree,
        "threshold": server.threshold,
    }


def run_flower(updates, *, holders: int, threshold: int, drop: set[int]) -> dict:
    out = run_flower_secaggplus(
        updates,
        num_shares=holders,
        threshold=threshold,
        clip=CLIP,
        quant_bits=8,
        drop_before_masked_input=drop,
    )
    survivors = [c for c in updates if c not in drop]
    exact = np.mean([updates[c] for c in survivors], axis=0)
    aggregate = out.pop("aggregate")
    return {**out, "max_abs_error": float(np.abs(aggregate - exact).max())}


def signature_cost(n: int, degree: int, quorum: int) -> dict:
    """Ed25519 operations a round of ``n`` clients adds, timed here: per client, its signature
    on its keys (with the Merkle root over its receive keys), on what it dealt and on the
    survivor set; it checks every advertised key signature and the quorum's signatures
    (receive keys by their Merkle paths: hashes only). The server checks every key, deal and
    survivor-set signature once."""
    identity, message = Identity.generate(), b"x" * 200
    sign_s = timeit.timeit(lambda: identity.sign(b"bench", message), number=300) / 300
    signature = identity.sign(b"bench", message)
    verify_s = (
        timeit.timeit(
            lambda: verify(identity.public_bytes, signature, b"bench", message, who="bench"),
            number=300,
        )
        / 300
    )
    client = 3 * sign_s + (n + quorum) * verify_s
    server = (n + n + n) * verify_s
    return {"sign_us": sign_s * 1e6, "verify_us": verify_s * 1e6, "client_s": client,
            "server_s": server}  # fmt: skip


_warm = False


def _warm_up() -> None:
    """One tiny round of each first: kernel loading and imports stay out of the timings."""
    global _warm
    if not _warm:
        _warm = True
        updates = _updates(4, 1000)
        run_ours(updates, config=SecAggConfig(clip=CLIP, weight_bits=0), drop=set())
        run_flower(updates, holders=3, threshold=2, drop=set())


def _median(repeats: int, run) -> dict:
    """The run with the median round time out of ``repeats``."""
    runs = sorted((run() for _ in range(repeats)), key=lambda r: r["round_s"])
    return {**runs[len(runs) // 2], "repeats": repeats}


def case(n: int, d: int, dropout: float = 0.0, with_flower: bool = True, repeats: int = 3) -> dict:
    updates = _updates(n, d)
    # Unweighted mean on both sides (Flower: every client reports 1 example, max_weight 1).
    config = SecAggConfig(clip=CLIP, quant_bits=8, weight_bits=0)
    k = config.degree(n)
    if (k + 1) % 2 == 0 and k + 1 != n:  # Flower wants an odd group size below n
        config = SecAggConfig(clip=CLIP, quant_bits=8, weight_bits=0, neighbours=k - 2)
    drop = set(range(0, n, round(1 / dropout))) if dropout else set()
    _warm_up()
    ours = _median(repeats, lambda: run_ours(updates, config=config, drop=drop))
    ours["signatures"] = signature_cost(n, ours["neighbours"], config.quorum(n))
    if not with_flower:
        return {"n": n, "d": d, "dropped": sorted(drop), "ours": ours, "flower": None}
    flower = _median(
        repeats,
        lambda: run_flower(
            updates, holders=ours["neighbours"] + 1, threshold=ours["threshold"], drop=drop
        ),
    )
    ratios = {
        f"{key}_flower_over_ours": flower[key] / ours[key]
        for key in ("round_s", "critical_s", "server_s", "client_s", "bytes_up_per_client")
    }
    return {"n": n, "d": d, "dropped": sorted(drop), "ours": ours, "flower": flower, **ratios}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument(
        "--flower-max-n",
        type=int,
        default=100,
        help="largest n at which the sweep also runs Flower (its server time "
        "grows fast: about 30 s at n=50 here)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        headline, sweep_d, sweep_n = [(5, 1000)], 1000, [5, 10]
    else:
        headline, sweep_d, sweep_n = (
            [(10, 1_000_000), (50, 100_000)],
            100_000,
            [10, 25, 50, 100, 200],
        )
    results = {"benchmark": "secagg", "cases": [], "sweep": []}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "secagg.json"
    for n, d in headline:
        results["cases"].append(c := case(n, d, repeats=1 if args.quick else 3))
        path.write_text(json.dumps(results, indent=2) + "\n")  # partial results survive
        print(
            f"n={n} d={d:,}: round ×{c['round_s_flower_over_ours']:.2f} faster in one process, "
            f"×{c['critical_s_flower_over_ours']:.2f} on the critical path, upload "
            f"×{c['bytes_up_per_client_flower_over_ours']:.2f} smaller, client "
            f"×{c['client_s_flower_over_ours']:.2f} faster (Flower / ours)",
            flush=True,
        )
    for n in sweep_n:
        with_flower = n <= args.flower_max_n
        results["sweep"].append(
            c := case(n, sweep_d, dropout=0.1, with_flower=with_flower, repeats=1)
        )
        flower = f"{c['flower']['server_s']:.3f} s" if with_flower else "not run"
        print(
            f"sweep n={n}: server ours {c['ours']['server_s']:.3f} s, Flower {flower}", flush=True
        )
        path.write_text(json.dumps(results, indent=2) + "\n")
    _plot(results["sweep"], args.out / "secagg_server_time.png")
    return results


def _plot(sweep: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [c["n"] for c in sweep]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ns, [c["ours"]["server_s"] for c in sweep], marker="o", label="fedshield")
    with_flower = [c for c in sweep if c["flower"]]
    ax.plot(
        [c["n"] for c in with_flower],
        [c["flower"]["server_s"] for c in with_flower],
        marker="s",
        label="Flower 1.42",
    )
    ax.set(
        xlabel="clients n (10% drop before masked input)",
        ylabel="server seconds",
        title=f"SecAgg+ server time, d = {sweep[0]['d']:,}",
    )
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
