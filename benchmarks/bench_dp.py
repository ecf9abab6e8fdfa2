"""Privacy against utility on BreastMNIST: the final pooled AUC for a target epsilon.

For each epsilon in {1, 2, 4, 8, 64, 1024, inf} (inf: the same run without DP), the same
seed, sites and rounds: record-level DP-SGD inside each site's training (Opacus,
``--dp-sgd``, under secagg), site-level DP-FedAvg with the server's noise on the exact sum
(``--dp-mode central``, which needs ``plain`` float32: under quantization an update could pass
its clip), and site-level DP-FedAvg with each site's integer noise inside SecAgg+
(``--dp-mode distributed``). The two large epsilons show where site-level noise stops
swamping the update of 4 sites. The noise is
calibrated to reach epsilon after the last round (delta 1e-5). Writes ``dp.json`` (every
run's final AUC, the epsilon it spent, its noise multiplier) and ``dp.png``.

    python benchmarks/bench_dp.py --out runs/bench            # 10 rounds, several minutes
    python benchmarks/bench_dp.py --out runs/bench --quick    # 2 rounds, epsilon 8 and inf
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

from fedshield.engine.experiment import RunConfig, build_federation

MODES = {
    "dp-sgd (record level)": {"dp_sgd": True},
    "central (site level, plain)": {
        "dp_mode": "central",
        "dp_clip": 0.5,
        "protect": "plain",
        "quant_bits": None,
    },
    "distributed (site level, secagg)": {"dp_mode": "distributed", "dp_clip": 0.5},
}


def run(config: RunConfig) -> dict:
    """Train ``config``; the last round's AUC, epsilon and noise multiplier."""
    fed = build_federation(config)
    record = {}
    for _ in range(config.rounds):
        record = fed.run_round().as_dict()
    return {
        "auc": record["auc"],
        "epsilon": record.get("epsilon", math.inf) if record.get("dp_mode") else math.inf,
        "noise_multiplier": record.get("noise_multiplier"),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--quick", action="store_true", help="2 rounds, epsilon 8 and inf")
    args = parser.parse_args(argv)
    rounds, epsilons = (2, [8.0]) if args.quick else (10, [1.0, 2.0, 4.0, 8.0, 64.0, 1024.0])
    base = RunConfig(dataset="breastmnist", sites=4, rounds=rounds, seed=0, protect="secagg")
    # the same seed and sites for every run; dp-sgd under secagg, central under plain
    results = {"benchmark": "dp", "rounds": rounds, "sites": 4, "delta": 1e-5,
               "no_dp": run(base), "modes": {}}  # fmt: skip
    for name, options in MODES.items():
        results["modes"][name] = {  # dp-sgd: the same CNN, its BatchNorm as GroupNorm
            str(eps): run(replace(base, dp_epsilon=eps, **options)) for eps in epsilons
        }
        print(name, {e: round(r["auc"], 3) for e, r in results["modes"][name].items()}, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dp.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    _plot(results, args.out / "dp.png")
    return results


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, runs in results["modes"].items():
        eps = [float(e) for e in runs]
        ax.plot(eps, [r["auc"] for r in runs.values()], marker="o", label=name)
    ax.axhline(results["no_dp"]["auc"], color="gray", linestyle="--", label="no DP")
    title = f"BreastMNIST, {results['sites']} sites, {results['rounds']} rounds"
    ax.set(xscale="log", xlabel="epsilon (delta 1e-5)", ylabel="final pooled AUC", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
