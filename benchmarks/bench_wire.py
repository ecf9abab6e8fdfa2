"""Wire format: our plain-protocol message beside Flower's ndarray serialisation.

Same process, same vector. Ours: ``PlainClient`` encodes (weight, float32 update) and the
``PlainServer`` parses and checks it (lengths, dtype, shape, finiteness) and adds it to the
running sum. Flower 1.42: ``ndarrays_to_parameters`` / ``parameters_to_ndarrays`` (``np.save``
into bytes and back), plus the same finiteness check and sum so the work compared is equal.
Writes ``wire.json`` with times, bytes and ratios (Flower's time / ours).

    python benchmarks/bench_wire.py --out runs/bench
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fedshield.protocols import PlainClient, PlainServer


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench(dim: int, repeats: int) -> dict:
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

    update = np.random.default_rng(0).normal(size=dim).astype(np.float32)

    def ours_encode():
        server = PlainServer(round=0, clients=[0], dim=dim)
        client = PlainClient(client_id=0, round=0, update=update, weight=3.0)
        return server, client.handle("input", server.broadcast("input")[0])

    _server, message = ours_encode()

    def ours_decode():
        s = PlainServer(round=0, clients=[0], dim=dim)
        s.broadcast("input")
        s.receive("input", 0, message)

    def flower_encode():
        return ndarrays_to_parameters([np.array([3.0]), update])

    params = flower_encode()

    def flower_decode():
        weight, vec = parameters_to_ndarrays(params)
        if not np.isfinite(vec).all():
            raise ValueError
        total = np.zeros(dim, np.float64)
        total += float(weight[0]) * vec.astype(np.float64)

    ours = {
        "encode_s": _best(ours_encode, repeats),
        "decode_s": _best(ours_decode, repeats),
        "bytes": len(message),
    }
    flower = {
        "encode_s": _best(flower_encode, repeats),
        "decode_s": _best(flower_decode, repeats),
        "bytes": sum(len(t) for t in params.tensors),
    }
    return {
        "dim": dim,
        "ours": ours,
        "flower": flower,
        "ratio_encode": flower["encode_s"] / ours["encode_s"],
        "ratio_decode": flower["decode_s"] / ours["decode_s"],
        "ratio_bytes": flower["bytes"] / ours["bytes"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--dims", type=int, nargs="+", default=[100_000, 1_000_000, 7_000_000])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    results = {"benchmark": "wire", "cases": [bench(d, args.repeats) for d in args.dims]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "wire.json").write_text(json.dumps(results, indent=2) + "\n")
    for case in results["cases"]:
        print(
            f"d={case['dim']:>9,}: encode ×{case['ratio_encode']:.2f}, decode+check+sum "
            f"×{case['ratio_decode']:.2f}, bytes ×{case['ratio_bytes']:.3f} (Flower / ours)"
        )
    return results


if __name__ == "__main__":
    main()
