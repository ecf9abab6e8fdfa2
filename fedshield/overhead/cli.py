"""``fedshield bench overhead``: the subcommand and the run that writes its files."""

from __future__ import annotations

import argparse
import os
import time
from datetime import datetime
from pathlib import Path

from fedshield.errors import ConfigError

__all__ = ["add_overhead_command", "run_overhead_bench"]


def add_overhead_command(bench_sub: argparse._SubParsersAction, console) -> None:
    """Add ``overhead`` beside ``privacy`` under ``fedshield bench``."""
    overhead = bench_sub.add_parser(
        "overhead", help="what each protection costs, beside Flower's SecAgg+ and the FLARE way"
    )
    overhead.add_argument("--quick", action="store_true", help="a reduced grid (< 10 minutes)")
    overhead.add_argument("--out", type=Path, default=None, help="output folder (runs/<time>)")
    overhead.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests
    overhead.set_defaults(handler=lambda args: _cmd_overhead(args, console))


def _cmd_overhead(args: argparse.Namespace, console) -> int:
    preset = "tiny" if args.tiny else "quick" if args.quick else "full"
    out = args.out or Path("runs") / f"bench-overhead-{datetime.now():%Y%m%d-%H%M%S}"
    console.print(f"[bold]fedshield bench overhead[/] ({preset}) → {out}")
    document, paths = run_overhead_bench(preset, out, console=console)
    _print_summary(document, console)
    console.print(f"done in {document['seconds']:.0f} s; wrote " + ", ".join(map(str, paths)))
    return 0


def run_overhead_bench(preset_name: str, out: Path, *, console=None) -> tuple[dict, list[Path]]:
    """Run the overhead grid of preset ``preset_name`` (``full``, ``quick`` or ``tiny``) and
    each protection's short training; write ``bench.json``, ``bench.md`` and the PNG plots into
    ``out``. Returns the JSON document and the paths written.

    Raises:
        ConfigError: an unknown preset.
    """
    from fedshield.engine.reproducibility import environment
    from fedshield.overhead.eval_cost import EVAL_PROTECTIONS, run_evaluation_grid
    from fedshield.overhead.grid import PRESETS, run_grid
    from fedshield.overhead.report import add_ratios, write_outputs
    from fedshield.overhead.training import train_auc
    from fedshield.report import progress_bar

    if preset_name not in PRESETS:
        raise ConfigError(f"unknown preset {preset_name!r}; choose one of {sorted(PRESETS)}")
    preset, start = PRESETS[preset_name], time.perf_counter()
    evaluated = [p for p in preset.protections if p in EVAL_PROTECTIONS]
    grid = len(preset.models) * len(preset.sites) * len(preset.protections)
    total = grid + len(evaluated) * len(preset.sites) + len(preset.protections)  # and the AUCs
    with progress_bar(console) as progress:
        task = progress.add_task("overhead", total=total)

        def on_cell(description: str) -> None:
            progress.update(task, description=description)
            progress.advance(task)

        cells = run_grid(preset, on_cell=on_cell)
        evaluation = run_evaluation_grid(evaluated, preset.sites, cells, on_cell=on_cell)
        auc = {}
        for protection in preset.protections:
            on_cell(f"AUC: {protection}")
            auc[protection] = train_auc(preset, protection, out / "auc-cache")
    add_ratios(cells)
    document = {
        "command": "fedshield bench overhead",
        "preset": preset.name,
        "grid": {
            "models": list(preset.models),
            "sites": list(preset.sites),
            "protections": list(preset.protections),
            "cell_budget_s": preset.cell_budget_s,
        },
        "cells": cells,
        "evaluation": evaluation,
        "auc": auc,
        "seconds": time.perf_counter() - start,
        "environment": {**environment(), "cpus": len(os.sched_getaffinity(0))},
    }
    return document, write_outputs(out, document)


def _print_summary(doc: dict, console) -> None:
    from rich.table import Table

    table = Table(title="Overhead (peer / ours: above 1, ours cheaper)", header_style="bold")
    for col in ("protection", "model", "n", "client s", "up B", "critical s", "up ×", "crit ×"):
        table.add_column(col, justify="right")
    for r in doc["cells"]:
        if r["status"] != "ok":
            table.add_row(r["protection"], r["model"], str(r["n"]), r["status"], "", "", "", "")
            continue
        v = r.get("vs_peer") or {}
        table.add_row(
            r["protection"], r["model"], str(r["n"]), f"{r['client_s']:.4f}",
            f"{r['bytes_up']:,.0f}", f"{r['critical_s']:.4f}",
            _fmt(v.get("bytes_up_peer_over_ours")), _fmt(v.get("critical_s_peer_over_ours")),
        )  # fmt: skip
    console.print(table)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"
