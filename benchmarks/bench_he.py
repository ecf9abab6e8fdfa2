"""Homomorphic aggregation: ours (packed BFV, 8-bit) beside the NVIDIA FLARE way, same run.

The FLARE way (as its HE filters do it): TenSEAL CKKS, N = 8192, coefficient moduli
[60, 40, 40], scale 2^40, a symmetric context, one ``ckks_vector`` per layer, serialized. Ours:
``fedshield.protocols.he`` sessions, BFV with several quantized values per slot, seeded symmetric
ciphertexts. The update is one of a MONAI ``DenseNet121(spatial_dims=2, in_channels=1,
out_channels=2)`` state dict (7.0M floats). For n = 3 and n = 10 sites: per-site encrypt
time, bytes uploaded (and the ratio to the float32 update), server sum time, per-site decrypt
time, the max abs error, and ratios (FLARE way / ours). Ours runs three ways: the default
(8-bit FedAvg weights inside the ciphertexts, one worker process per core), the same in one
process, and unweighted (every weight 1, as the FLARE vectors are). Every time is the median
of ``--repeats`` runs after a warm-up. Writes ``he.json`` with the targets of the issue and
whether each is met.

    python benchmarks/bench_he.py --out runs/bench            # DenseNet121, a few minutes
    python benchmarks/bench_he.py --out runs/bench --quick    # a small model, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from fedshield.overhead.flare_peer import flare_way
from fedshield.protocols.he import HEClient, HEServer
from fedshield.protocols.he.keys import HEKeyring
from fedshield.protocols.he.params import HEConfig, plan_for

CLIP = 0.05


def densenet_update(quick: bool) -> list[np.ndarray]:
    """A seeded update with the shapes of every floating tensor of the state dict."""
    from monai.networks.nets import DenseNet121

    if quick:
        shapes = [(64, 1, 3, 3), (64,), (128, 64), (128,), (2, 128)]
    else:
        model = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2)
        shapes = [tuple(t.shape) for t in model.state_dict().values() if t.is_floating_point()]
        del model
    rng = np.random.default_rng(0)
    return [rng.normal(0, CLIP / 4, s).astype(np.float32) for s in shapes]


TARGETS = {  # FLARE way / ours, at least (bytes: ours / fp32, at most)
    "bytes_over_fp32": 1.0,
    "encrypt_s": 10.0,
    "sum_s": 10.0,
    "decrypt_s": 5.0,
}
TIMES = ("encrypt_s", "sum_s", "decrypt_s")


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _median_of(run, repeats: int) -> dict:
    """``run()`` ``repeats`` times; times are the medians, everything else from the last."""
    runs = [run() for _ in range(repeats)]
    out = dict(runs[-1])
    for key in TIMES:
        out[key] = statistics.median(r[key] for r in runs)
    return out


# --- ours -------------------------------------------------------------------------------------
def ours(
    layers: list[np.ndarray],
    n: int,
    *,
    weight_bits: int = 8,
    weighting: str = "fraction",
    workers: int | None = None,
) -> dict:
    update = np.concatenate([layer.ravel() for layer in layers])
    config = HEConfig(
        clip=CLIP, quant_bits=8, weight_bits=weight_bits, max_weight=1.0, weighting=weighting
    )
    plan = plan_for(config, n_clients=n, dim=update.size)
    keyring = HEKeyring.generate(plan)
    client = HEClient(
        client_id=0, round=1, update=update, weight=1.0, keyring=keyring, workers=workers
    )
    server = HEServer(round=1, clients=range(n), dim=update.size, plan=plan, workers=workers)
    request = server.broadcast("input")[0]
    answer, encrypt_s = _timed(lambda: client.handle("input", request))
    # Every site sent the same ciphertexts here (parsing still runs for each).
    answers = [_as_sender(answer, c) for c in range(n)]

    def server_sum():
        for c in range(n):
            server.receive("input", c, answers[c])
        server.close_stage("input")
        return server.broadcast("aggregate")[0]

    down, sum_s = _timed(server_sum)
    _, decrypt_s = _timed(lambda: client.handle("aggregate", down))
    weighted_sum, total = client.aggregate
    return {
        "encrypt_s": encrypt_s,
        "bytes_up": len(answer),
        "sum_s": sum_s,
        "decrypt_s": decrypt_s,
        # Against the clipped update: clipping to [-clip, clip] is part of the encoding.
        "max_abs_error": float(np.abs(weighted_sum / total - np.clip(update, -CLIP, CLIP)).max()),
        "values_per_slot": plan.per_slot,
        "ciphertexts": plan.n_ciphertexts,
        "workers": len(server.ranges),
    }


def _as_sender(answer: bytes, sender: int) -> bytes:
    """The same message as if ``sender`` had sent it (the header names the sender)."""
    from fedshield import wire

    message = wire.parse(answer)
    header = wire.Header(message.header.protocol, message.header.stage, 1, sender)
    return wire.serialize(header, list(message.fields))


# --- ours, threshold keys -----------------------------------------------------------------------
THRESHOLD_TARGETS = {"bytes_over_fp32": 2.0, "encrypt_s": 5.0, "sum_s": 5.0}  # issue 16


def _threshold_sites(plan, n: int) -> tuple[dict, float]:
    """n sites' threshold sessions for round 1 after a real key generation, and one site's
    share of the key generation's time (the n sites run one after another here: Shamir
    dealing and sealing included, it is about the total over n)."""
    from fedshield.engine.runner import run_protocol
    from fedshield.engine.transport import InProcessTransport
    from fedshield.protocols.he.threshold_keys import (
        ThresholdKeySetupClient,
        ThresholdKeySetupServer,
    )
    from fedshield.protocols.roster import Roster

    roster, ids = Roster.enrol(range(n), min_sites=n)

    def keygen():
        sites = {c: ThresholdKeySetupClient(client_id=c, plan=plan, roster=roster,
                                            identity=ids[c]) for c in range(n)}  # fmt: skip
        run_protocol(ThresholdKeySetupServer(round=0, clients=list(range(n)), dim=1, plan=plan,
                                             roster=roster), InProcessTransport(sites))  # fmt: skip
        return sites

    setup, keygen_s = _timed(keygen)
    keyrings = {c: site.keyring for c, site in setup.items()}
    return {"roster": roster, "identities": ids, "keyrings": keyrings}, keygen_s / n


def _timed_stages(server, clients) -> tuple[dict, dict]:
    """Run every stage; each stage's broadcast, first client and server times, and the
    first client's bytes up."""
    times, sent = {}, {}
    for name in server.stages:
        messages, times[f"broadcast_{name}"] = _timed(lambda name=name: server.broadcast(name))
        answers = {}
        for c, m in messages.items():
            answers[c], spent = _timed(lambda c=c, m=m, name=name: clients[c].handle(name, m))
            times.setdefault(name, spent)
        sent[name] = len(answers[0])
        _, times[f"server_{name}"] = _timed(
            lambda name=name, answers=answers: [server.receive(name, c, a)
                                                for c, a in answers.items()]
        )  # fmt: skip
        server.close_stage(name)
    return times, sent


def ours_threshold(layers: list[np.ndarray], n: int) -> dict:
    """n real sites with key shares (the collective key made by the real sessions); one
    site's times and bytes, the server's sum and its sum of the partial decryptions."""
    from fedshield.protocols.he.threshold import ThresholdClient, ThresholdServer

    update = np.concatenate([layer.ravel() for layer in layers])
    config = HEConfig(clip=CLIP, quant_bits=8, weight_bits=8, max_weight=1.0, keys="threshold")
    plan = plan_for(config, n_clients=n, dim=update.size)
    federation, keygen_s = _threshold_sites(plan, n)
    clients = {c: ThresholdClient(client_id=c, round=1, update=update, weight=1.0,
                                  keyring=federation["keyrings"][c], roster=federation["roster"],
                                  identity=federation["identities"][c])
               for c in range(n)}  # fmt: skip
    server = ThresholdServer(round=1, clients=range(n), dim=update.size, plan=plan,
                             roster=federation["roster"])  # fmt: skip
    times, sent = _timed_stages(server, clients)
    weighted_sum, total = clients[0].aggregate
    return {
        "keygen_s": keygen_s,
        "encrypt_s": times["input"],  # encryption (and reading the coefficients out of SEAL)
        "bytes_up": sent["input"],  # the ciphertexts
        "bytes_total_up": sum(sent.values()),  # ... the signed digests and the partial
        "sum_s": times["server_input"] + times["broadcast_digest"],  # unpack, check, add; pack
        "partial_s": times["digest"] + times["decrypt"],  # digests, check the sum, partials
        "combine_s": times["server_decrypt"] / n + times["aggregate"],  # per site: add, decode
        "decrypt_s": times["digest"] + times["decrypt"] + times["aggregate"],
        "max_abs_error": float(np.abs(weighted_sum / total - np.clip(update, -CLIP, CLIP)).max()),
        "values_per_slot": plan.per_slot,
        "ciphertexts": plan.n_ciphertexts,
        "flood_bits": plan.flood_bits,
        "workers": 1,  # the server adds with numpy in one process
    }


OURS = {  # name: options of ours()
    "ours": {},
    "ours_one_process": {"workers": 1},
    "ours_integer_weights": {"weighting": "integer"},
    "ours_unweighted": {"weight_bits": 0},
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--quick", action="store_true", help="a small model, for a smoke test")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (median)")
    args = parser.parse_args(argv)
    layers = densenet_update(args.quick)
    fp32_bytes = 4 * sum(layer.size for layer in layers)
    result = {
        "benchmark": "he",
        "values": fp32_bytes // 4,
        "fp32_bytes": fp32_bytes,
        "cpus": len(os.sched_getaffinity(0)),
        "repeats": args.repeats,
        "cases": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    small = densenet_update(True)
    flare_way(small, 2)  # warm-up: imports, kernel loading, first allocations
    ours(small, 2, workers=2)
    for n in (3, 10):
        flare = _median_of(lambda n=n: flare_way(layers, n), args.repeats)
        flare["bytes_over_fp32"] = flare["bytes_up"] / fp32_bytes
        case = {"n": n, "flare": flare}
        for name, options in OURS.items():
            mine = _median_of(lambda n=n, o=options: ours(layers, n, **o), args.repeats)
            mine["bytes_over_fp32"] = mine["bytes_up"] / fp32_bytes
            case[name] = mine
            case[f"{name}_ratios"] = {
                f"{key}_flare_over_ours": flare[key] / mine[key]
                for key in ("encrypt_s", "bytes_up", "sum_s", "decrypt_s")
            }
        threshold = _median_of(lambda n=n: ours_threshold(layers, n), args.repeats)
        threshold["bytes_over_fp32"] = threshold["bytes_up"] / fp32_bytes
        case["ours_threshold"] = threshold
        case["ours_threshold_ratios"] = {
            f"{key}_flare_over_ours": flare[key] / threshold[key]
            for key in ("encrypt_s", "bytes_up", "sum_s", "decrypt_s")
        }
        case["targets"] = _targets(case)
        r, total = case["ours_threshold_ratios"], threshold["bytes_total_up"] / fp32_bytes
        print(
            f"n={n} ours_threshold: bytes {threshold['bytes_over_fp32']:.2f}x fp32 ({total:.2f}x "
            f"with the partial); encrypt x{r['encrypt_s_flare_over_ours']:.1f}, sum "
            f"x{r['sum_s_flare_over_ours']:.1f} faster (FLARE way / ours); keygen "
            f"{threshold['keygen_s'] * 1e3:.0f} ms/site, partial {threshold['partial_s']:.2f} s",
            flush=True,
        )
        result["cases"].append(case)
        (args.out / "he.json").write_text(json.dumps(result, indent=2) + "\n")
        for name in OURS:
            r, m = case[f"{name}_ratios"], case[name]
            print(
                f"n={n} {name} ({m['workers']} process(es)): bytes {m['bytes_over_fp32']:.2f}x "
                f"fp32 (FLARE {flare['bytes_over_fp32']:.1f}x); encrypt "
                f"x{r['encrypt_s_flare_over_ours']:.1f}, sum x{r['sum_s_flare_over_ours']:.1f}"
                f", decrypt x{r['decrypt_s_flare_over_ours']:.1f} faster (FLARE way / ours)",
                flush=True,
            )
    return result


def _targets(case: dict) -> dict:
    """The issue's targets for every variant of ours: the value and whether it is met."""
    out = {}
    for name in OURS:
        mine, ratios = case[name], case[f"{name}_ratios"]
        limit = TARGETS["bytes_over_fp32"]
        checks = {"bytes_over_fp32": (mine["bytes_over_fp32"], mine["bytes_over_fp32"] <= limit)}
        for key in TIMES:
            ratio = ratios[f"{key}_flare_over_ours"]
            checks[f"{key}_flare_over_ours"] = (ratio, ratio >= TARGETS[key])
        out[name] = {k: {"value": v, "met": met} for k, (v, met) in checks.items()}
    mine, ratios = case["ours_threshold"], case["ours_threshold_ratios"]
    value = mine["bytes_over_fp32"]
    checks = {"bytes_over_fp32": (value, value <= THRESHOLD_TARGETS["bytes_over_fp32"])}
    for key in ("encrypt_s", "sum_s"):
        ratio = ratios[f"{key}_flare_over_ours"]
        checks[f"{key}_flare_over_ours"] = (ratio, ratio >= THRESHOLD_TARGETS[key])
    out["ours_threshold"] = {k: {"value": v, "met": met} for k, (v, met) in checks.items()}
    return out


if __name__ == "__main__":
    main()
