"""End to end: every protection on real images, the same federation, side by side.

For each model (our BatchNorm CNN ``cnn``, the one BreastMNIST runs use, and MONAI's
``resnet18``) and each protection mode (``plain`` fp32, ``secagg`` 8-bit with adaptive ranges,
``he`` packed BFV, ``he-ckks``, and ``randk``: SecAgg of a 10% rand-k sparsified update with
error feedback, its sites training only the round's kept coordinates: ``docs/compression.md``),
it trains BreastMNIST over 4 sites with the same seed for N rounds, in process, exactly as
``fedshield run`` does. Reported per model and mode: the AUC at rounds 3, 5 and 10
(those that exist), the uplink bytes per client per round (median over rounds) and its ratio
to the same model's plain fp32 run, the critical-path seconds per round (median over the
rounds after the first, which pays one-time compilation) and its ratio to plain, and the wall
seconds of the run. One unrecorded plain round per model first pays the process's first-use
costs, so that the first mode timed is not charged for them. Writes ``e2e.json`` and
``e2e.png`` (per model: AUC per round for every mode; the critical-path ratio to plain).

    python benchmarks/bench_e2e.py --out runs/bench            # cnn and resnet18, 10 rounds
    python benchmarks/bench_e2e.py --out runs/bench --quick    # cnn only, 3 rounds
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from fedshield.data import breastmnist_path
from fedshield.engine.experiment import RunConfig, build_federation
from fedshield.errors import DataError

MODES: dict[str, dict] = {  # mode name -> the RunConfig options its command line sets
    "plain": {"protect": "plain"},
    "secagg": {"protect": "secagg"},
    "he": {"protect": "he"},
    "he-ckks": {"protect": "he", "he_scheme": "ckks"},
    "randk": {"protect": "secagg", "sparsify": "randk:0.1", "error_feedback": True},
}
MODELS = ("cnn", "resnet18")
AUC_ROUNDS = (3, 5, 10)
SITES = 4
console = Console()


def run_mode(model: str, mode: str, rounds: int, seed: int, on_round) -> list[dict]:
    """Train BreastMNIST with ``model`` under ``mode``; one ``as_dict`` row per round."""
    config = RunConfig(
        dataset="breastmnist", sites=SITES, rounds=rounds, seed=seed, threads=1, model=model,
        **MODES[mode],
    )  # fmt: skip
    fed = build_federation(config)
    rows = []
    for _ in range(rounds):
        rows.append(fed.run_round().as_dict())
        on_round()
    return rows


def _ratio(value: float, base: float | None) -> float | None:
    return None if not base else value / base


def summarise(rows: list[dict], wall_s: float) -> dict:
    """The numbers reported for one run (ratios to plain are added by :func:`add_ratios`)."""
    aucs = [float(r["auc"]) for r in rows]
    later = rows[1:] or rows  # round 1 pays one-time compilation
    return {
        "auc_per_round": aucs,
        "auc_at": {str(n): aucs[n - 1] for n in AUC_ROUNDS if n <= len(aucs)},
        "final_auc": aucs[-1],
        "bytes_up_per_client": statistics.median(r["bytes_up_per_client"] for r in rows),
        "critical_path_s": statistics.median(r["critical_path_s"] for r in later),
        "round_wall_s": statistics.median(r["wall_s"] for r in later),
        "wall_s": wall_s,
    }


def add_ratios(by_mode: dict[str, dict]) -> None:
    """Add each mode's uplink and critical-path ratios to its model's plain run (None: no
    plain run among the modes)."""
    plain = by_mode.get("plain", {})
    for summary in by_mode.values():
        for key in ("bytes_up_per_client", "critical_path_s"):
            summary[f"{key}_over_plain"] = _ratio(summary[key], plain.get(key))


def _progress():
    from fedshield.report import progress_bar

    return progress_bar(console)


def run_all(models: list[str], modes: list[str], rounds: int, seed: int) -> dict:
    """``results[model][mode]`` for every pair, with one progress bar over all rounds."""
    results: dict[str, dict] = {}
    with _progress() as progress:
        task = progress.add_task("e2e", total=len(models) * len(modes) * rounds)
        for model in models:
            progress.update(task, description=f"{model} / warm-up")
            run_mode(model, "plain", 1, seed, lambda: None)  # first-use costs, not recorded
            results[model] = {}
            for mode in modes:
                progress.update(task, description=f"{model} / {mode}")
                start = time.perf_counter()
                rows = run_mode(model, mode, rounds, seed, lambda: progress.advance(task))
                results[model][mode] = summarise(rows, time.perf_counter() - start)
            add_ratios(results[model])
    return results


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _all(results: dict) -> list[dict]:
    return [s for by_mode in results.values() for s in by_mode.values()]


def print_table(results: dict) -> None:
    """One row per model and mode."""
    table = Table(title="End to end on BreastMNIST (4 sites)", header_style="bold")
    shown = [n for n in AUC_ROUNDS if any(str(n) in s["auc_at"] for s in _all(results))]
    columns = ["model", "mode", *(f"AUC@{n}" for n in shown)]
    columns += ["up B", "up ×", "crit s", "crit ×", "wall s"]
    for name in columns:
        table.add_column(name, justify="right")
    for model, by_mode in results.items():
        for mode, s in by_mode.items():
            table.add_row(
                model,
                mode,
                *(_fmt(s["auc_at"].get(str(n)), ".3f") for n in shown),
                f"{s['bytes_up_per_client']:,.0f}",
                _fmt(s["bytes_up_per_client_over_plain"], ".3f"),
                f"{s['critical_path_s']:.3f}",
                _fmt(s["critical_path_s_over_plain"], ".2f"),
                f"{s['wall_s']:.1f}",
            )
    console.print(table)


def plot(results: dict, path: Path) -> None:
    """Per model: AUC per round for every mode, and bars of the critical-path ratio to plain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(len(results), 2, figsize=(11, 4 * len(results)), squeeze=False)
    for (auc_ax, bar_ax), (model, by_mode) in zip(axes, results.items(), strict=True):
        for mode, s in by_mode.items():
            xs = range(1, len(s["auc_per_round"]) + 1)
            auc_ax.plot(xs, s["auc_per_round"], marker="o", label=mode)
        auc_ax.set(xlabel="round", ylabel="test AUC", title=f"{model}: AUC per round")
        auc_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        auc_ax.legend()
        auc_ax.grid(alpha=0.3)
        modes = list(by_mode)
        ratios = [by_mode[m]["critical_path_s_over_plain"] or 0.0 for m in modes]
        bar_ax.bar(modes, ratios, color="tab:blue")
        bar_ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        bar_ax.set(ylabel="critical path / plain", title=f"{model}: round critical path")
        bar_ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _names(text: str, known, option: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise SystemExit(f"{option}: unknown {unknown or 'empty list'}; choose from {list(known)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--quick`` sets the cnn model and 3 rounds unless given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--quick", action="store_true", help="cnn only, 3 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per run (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default=None, help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--modes", default=",".join(MODES), help="comma list of the modes")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 10)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.models = _names(
        args.models or ("cnn" if args.quick else ",".join(MODELS)), MODELS, "--models"
    )
    args.modes = _names(args.modes, MODES, "--modes")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        data = breastmnist_path()
    except DataError as error:
        raise SystemExit(f"bench_e2e needs BreastMNIST: {error}") from None
    torch.set_num_threads(1)
    console.print(
        f"[bold]e2e[/]: BreastMNIST ({data}), {SITES} sites, {args.rounds} rounds, seed "
        f"{args.seed}; models {args.models}; modes {args.modes}"
    )
    doc = {
        "benchmark": "e2e",
        "config": {
            "rounds": args.rounds,
            "seed": args.seed,
            "sites": SITES,
            "models": args.models,
            "modes": args.modes,
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "results": run_all(args.models, args.modes, args.rounds, args.seed),
    }
    print_table(doc["results"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "e2e.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(doc["results"], args.out / "e2e.png")
    console.print(f"wrote {args.out / 'e2e.json'}, {args.out / 'e2e.png'}")
    return doc


if __name__ == "__main__":
    main()
