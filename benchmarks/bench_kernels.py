"""Compression kernels: ours beside the numpy reference, torch and Flower, same process.

At d = 10M float32 values (``--dim``): 8-bit stochastic quantization (fixed range; Flower 1.42's
``flwr.common.secure_aggregation.quantization.quantize`` and a torch version beside it), per-chunk
quantization, exact and sampled top-k of 1% (``np.argpartition``, ``torch.topk``), rand-k of 1%
(``torch.randperm``, ``numpy.random.Generator.choice``), 12-bit pack and unpack (GB/s of packed
bytes) and the error-feedback residual. Each time is the best of ``--repeats`` after one warm-up
call; numba compile time and cache-load time are measured separately, each in a fresh process.
Writes ``kernels.json``.

    python benchmarks/bench_kernels.py --out runs/bench            # d = 10M, about a minute
    python benchmarks/bench_kernels.py --out runs/bench --quick    # d = 100k, seconds
    pytest benchmarks/bench_kernels.py --benchmark-json runs/bench/kernels-pytest.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from flwr.common.secure_aggregation.quantization import quantize as flower_quantize

from fedshield.compress import bitpack, feedback, quantize, sparsify

CLIP = 0.1
TARGETS = {
    "quantize_fixed_8bit": {"numpy_over_ours": 20, "flower_over_ours": 50},
    "topk_exact_1pct": {"argpartition_over_ours": 4, "torch_over_ours": 10},
    "pack_12bit": {"gb_per_s": 2.0},
    "unpack_12bit": {"gb_per_s": 2.0},
}


def best_of(repeats: int, fn) -> float:
    """Seconds of the fastest of ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _torch_quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    scaled = (x.clamp(-CLIP, CLIP) + CLIP) * ((2**bits - 1) / (2 * CLIP))
    low = scaled.floor()
    return (low + (torch.rand_like(scaled) < scaled - low)).to(torch.uint8)


def run_cases(dim: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.05, dim).astype(np.float32)
    cases: dict[str, dict] = {}

    def case(name: str, **times: float) -> None:
        ours = times.pop("ours_s")
        cases[name] = {"ours_s": ours, **times}
        cases[name].update({f"{key[:-2]}_over_ours": t / ours for key, t in times.items()})

    _quantize_cases(case, x, repeats)
    _sparsify_cases(case, cases, x, rng, repeats)
    _packing_cases(case, cases, dim, rng, repeats)
    indices = sparsify.randk(dim, sparsify.k_for(dim, 0.01), seed=2)
    sent = x[indices]
    residual = feedback.ErrorFeedback(dim)
    case(
        "error_feedback_residual",
        ours_s=best_of(repeats, lambda: residual.keep_unsent(x, sent, indices)),
        numpy_s=best_of(repeats, lambda: feedback.residual_reference(x, indices, sent)),
    )
    return cases


def _quantize_cases(case, x: np.ndarray, repeats: int) -> None:
    tx = torch.from_numpy(x)
    case(
        "quantize_fixed_8bit",
        ours_s=best_of(repeats, lambda: quantize.quantize_fixed(x, clip=CLIP, bits=8, seed=1)),
        numpy_s=best_of(1, lambda: quantize.quantize_fixed_reference(x, clip=CLIP, bits=8, seed=1)),
        torch_s=best_of(repeats, lambda: _torch_quantize(tx, 8)),
        flower_s=best_of(3, lambda: flower_quantize([x], CLIP, 2**8 - 1)),
    )
    case(
        "quantize_chunked_8bit",
        ours_s=best_of(repeats, lambda: quantize.quantize_chunked(x, bits=8, seed=1)),
        numpy_s=best_of(1, lambda: quantize.quantize_chunked_reference(x, bits=8, seed=1)),
    )


def _sparsify_cases(case, cases: dict, x: np.ndarray, rng, repeats: int) -> None:
    dim = x.size
    k = sparsify.k_for(dim, 0.01)
    magnitude = torch.abs(torch.from_numpy(x))
    case(
        "topk_exact_1pct",
        ours_s=best_of(repeats, lambda: sparsify.topk_exact(x, k)),
        argpartition_s=best_of(repeats, lambda: np.argpartition(np.abs(x), -k)[-k:]),
        torch_s=best_of(repeats, lambda: torch.topk(magnitude, k, sorted=False)),
    )
    case(
        "topk_sampled_1pct",
        ours_s=best_of(repeats, lambda: sparsify.topk_sampled(x, k, seed=1)),
        argpartition_s=cases["topk_exact_1pct"]["argpartition_s"],
    )
    case(
        "randk_1pct",
        ours_s=best_of(repeats, lambda: sparsify.randk(dim, k, seed=1)),
        numpy_s=best_of(repeats, lambda: rng.choice(dim, k, replace=False)),
        torch_s=best_of(repeats, lambda: torch.randperm(dim)[:k]),
    )


def _packing_cases(case, cases: dict, dim: int, rng, repeats: int) -> None:
    levels = rng.integers(0, 2**12, dim).astype(np.uint16)
    buffer = bitpack.pack_buffer(dim, 12)
    packed = bitpack.pack(levels, 12)
    case(
        "pack_12bit",
        ours_s=best_of(repeats, lambda: bitpack.pack_into(levels, 12, buffer)),
        numpy_s=best_of(1, lambda: bitpack.pack_reference(levels, 12)),
    )
    case(
        "unpack_12bit",
        ours_s=best_of(repeats, lambda: bitpack.unpack(packed, dim, 12, np.uint16)),
        numpy_s=best_of(1, lambda: bitpack.unpack_reference(packed, dim, 12)),
    )
    for name in ("pack_12bit", "unpack_12bit"):
        cases[name]["gb_per_s"] = len(packed) / cases[name]["ours_s"] / 1e9


_FIRST_CALLS = """
import json, time
import numpy as np
t = time.perf_counter()
from fedshield.compress import bitpack, feedback, quantize, sparsify
x = np.linspace(-1, 1, 1000, dtype=np.float32)
out = {}
for name, fn in [
    ("quantize_fixed", lambda: quantize.quantize_fixed(x, clip=0.1, bits=8, seed=1)),
    ("quantize_chunked", lambda: quantize.quantize_chunked(x, bits=8, seed=1)),
    ("topk_exact", lambda: sparsify.topk_exact(x, 10)),
    ("randk", lambda: sparsify.randk(1000, 10, seed=1)),
    ("pack", lambda: bitpack.pack(np.arange(1000, dtype=np.uint16), 12)),
    ("unpack", lambda: bitpack.unpack(bytes(1500), 1000, 12)),
    ("error_feedback", lambda: feedback.ErrorFeedback(1000).keep_unsent(x, x)),
]:
    t = time.perf_counter(); fn(); out[name] = time.perf_counter() - t
print(json.dumps(out))
"""


def compile_times() -> dict:
    """First-call seconds per kernel: compiling into an empty cache, then loading from it."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        runs = []
        for _ in range(2):
            done = subprocess.run(
                [sys.executable, "-c", _FIRST_CALLS],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {name: {"compile_s": runs[0][name], "cache_load_s": runs[1][name]} for name in runs[0]}


def check_targets(cases: dict) -> dict:
    """Each target, the measured value and whether it holds."""
    out = {}
    for name, targets in TARGETS.items():
        for key, floor in targets.items():
            value = cases[name][key]
            out[f"{name}.{key}"] = {"target": floor, "measured": value, "met": value >= floor}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--dim", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="d = 100k, 2 repeats")
    args = parser.parse_args(argv)
    dim, repeats = (100_000, 2) if args.quick else (args.dim, args.repeats)
    cases = run_cases(dim, repeats)
    result = {
        "benchmark": "kernels",
        "dim": dim,
        "repeats": repeats,
        "numba_threads": __import__("numba").get_num_threads(),
        "cases": cases,
        "first_call": compile_times(),
        "targets": check_targets(cases),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernels.json").write_text(json.dumps(result, indent=2) + "\n")
    for name, c in cases.items():
        ratios = ", ".join(f"{k} {v:.1f}x" for k, v in c.items() if k.endswith("_over_ours"))
        print(f"{name:26s} ours {c['ours_s'] * 1e3:8.2f} ms   {ratios}")
    for name, t in result["targets"].items():
        verdict = "ok" if t["met"] else "MISSED"
        print(f"target {name}: {t['measured']:.2f} (>= {t['target']}) {verdict}")
    return result


# --- the same kernels under pytest-benchmark (d = 1M) --------------------------------------
_X = np.random.default_rng(0).normal(0, 0.05, 1_000_000).astype(np.float32)


def test_quantize_fixed_8bit(benchmark):
    benchmark(quantize.quantize_fixed, _X, clip=CLIP, bits=8, seed=1)


def test_topk_exact_1pct(benchmark):
    benchmark(sparsify.topk_exact, _X, 10_000)


def test_randk_1pct(benchmark):
    benchmark(sparsify.randk, _X.size, 10_000, seed=1)


def test_pack_12bit(benchmark):
    levels = (np.arange(_X.size) % 4096).astype(np.uint16)
    benchmark(bitpack.pack_into, levels, 12, bitpack.pack_buffer(_X.size, 12))


if __name__ == "__main__":
    main()
