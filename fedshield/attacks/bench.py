"""``fedshield bench privacy``: what each protection stops, measured by attacking it.

Runs the grid of :mod:`fedshield.attacks.scenarios` (gradient inversion on real rounds,
membership inference on a short training) and writes ``bench-privacy.json`` (machine
readable), ``bench-privacy.md`` (tables) and one PNG per attacked update (true images above,
reconstructions below). ``--quick`` is a reduced grid (under 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import numpy as np

__all__ = ["register", "run_privacy_bench"]


def register(sub: argparse._SubParsersAction, console) -> argparse.ArgumentParser:
    """Add ``bench`` (with ``privacy`` under it) to the CLI's subcommands; returns the
    ``bench`` parser's subparsers' owner so that siblings (``bench overhead``) can join."""
    bench = sub.add_parser("bench", help="benchmarks: what the protections stop and cost")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    privacy = bench_sub.add_parser(
        "privacy", help="gradient inversion and membership inference against each protection"
    )
    privacy.add_argument("--quick", action="store_true", help="a reduced grid (< 10 minutes)")
    privacy.add_argument("--out", type=Path, default=None, help="output folder (runs/<time>)")
    privacy.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: steady on a busy host)"
    )
    privacy.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests
    privacy.set_defaults(handler=lambda args: _cmd_privacy(args, console))
    from fedshield.overhead import add_overhead_command

    add_overhead_command(bench_sub, console)  # bench overhead (fedshield.overhead)
    return bench


def _cmd_privacy(args: argparse.Namespace, console) -> int:
    preset = "tiny" if args.tiny else "quick" if args.quick else "full"
    out = args.out or Path("runs") / f"bench-privacy-{datetime.now():%Y%m%d-%H%M%S}"
    console.print(f"[bold]fedshield bench privacy[/] ({preset}) → {out}")
    document, paths = run_privacy_bench(preset, out, console=console, threads=args.threads)
    _print_summary(document, console)
    console.print(f"done in {document['seconds']:.0f} s; wrote " + ", ".join(map(str, paths)))
    return 0


def run_privacy_bench(
    preset_name: str, out: Path, *, console=None, threads: int = 1
) -> tuple[dict, list[Path]]:
    """Run the privacy grid of preset ``preset_name`` (``full``, ``quick`` or ``tiny``) on
    ``threads`` torch threads and write its files into ``out``; returns the JSON document and
    the paths written."""
    import torch

    from fedshield.attacks.reference import add_references
    from fedshield.attacks.scenarios import (
        PRESETS,
        inversion_rounds,
        load_images,
        membership_run,
        run_round,
    )
    from fedshield.engine.reproducibility import torch_threads
    from fedshield.errors import ConfigError
    from fedshield.report import progress_bar

    if preset_name not in PRESETS:
        raise ConfigError(f"unknown preset {preset_name!r}; choose one of {sorted(PRESETS)}")
    preset, start = PRESETS[preset_name], time.perf_counter()
    rounds = inversion_rounds(preset)
    images, labels, pool = load_images(preset)
    rows, membership = [], []
    with torch_threads(threads), progress_bar(console) as progress:
        task = progress.add_task("privacy bench", total=len(rounds) + 2)
        for spec in rounds:
            progress.update(task, description=f"inversion: {spec.name}")
            rows += add_references(spec, preset, images, labels, pool,
                                   run_round(spec, preset, images, labels, pool))  # fmt: skip
            progress.advance(task)
        for dp in (False, True):
            progress.update(task, description=f"membership: {'DP' if dp else 'plain'}")
            torch.manual_seed(0)
            membership.append(membership_run(preset, dp=dp))
            progress.advance(task)
    document = _document(preset, rows, membership, time.perf_counter() - start)
    document["torch_threads"] = threads
    return document, _write(out, document, rows)


def _document(preset, rows: list[dict], membership: list[dict], seconds: float) -> dict:
    from fedshield.engine.reproducibility import environment

    inversion = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    reference = [r["unrelated"] for r in inversion]
    return {
        "command": "fedshield bench privacy",
        "preset": preset.name,
        "dataset": preset.dataset,
        "model": preset.model,
        "attack": asdict(preset.attack),
        "inversion": inversion,
        "unrelated_reference": {
            "psnr": float(np.mean([r["psnr"] for r in reference])),
            "ssim": float(np.mean([r["ssim"] for r in reference])),
            "what": "each true image against unrelated images of the same dataset (test split)",
        },
        "references": REFERENCES,
        "membership": membership,
        "seconds": seconds,
        "environment": environment(),
    }


def _write(out: Path, document: dict, rows: list[dict]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "bench-privacy.json", out / "bench-privacy.md"]
    paths[0].write_text(json.dumps(document, indent=2, default=_plain) + "\n")
    paths[1].write_text(_markdown(document))
    for row in rows:
        paths.append(_grid_png(out / f"inversion-{row['scenario']}.png", row))
    return paths


def _plain(value):
    """JSON for numpy scalars; infinities as strings are never produced (PSNR is capped)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _markdown(doc: dict) -> str:
    ref = doc["unrelated_reference"]
    lines = [
        f"# fedshield bench privacy ({doc['preset']})", "",
        f"Dataset {doc['dataset']}, model {doc['model']}; {doc['seconds']:.0f} s.", "",
        "## Gradient inversion (honest-but-curious server)", "",
        f"Unrelated-image reference level (one image against one, averaged): PSNR "
        f"{ref['psnr']:.2f} dB, SSIM {ref['ssim']:.3f}.", "",
        *(f"- **{name}**: {what}" for name, what in REFERENCES.items()), "",
        "| scenario | server sees | images | labels | PSNR dB (per image) | SSIM | "
        "control PSNR (draws) | verdict (gain / margin) | unrelated, matched | dataset mean | "
        "unrelated, 1:1 | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    lines += [_inversion_line(r) for r in doc["inversion"]]
    lines += [
        "", "## Membership inference on the final model", "",
        "| protection | DP | epsilon | model test AUC | attack AUC (loss threshold) | "
        "attack AUC (calibrated) | members / non-members |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for m in doc["membership"]:
        eps = "-" if m["epsilon"] is None else f"{m['epsilon']:.2f}"
        lines.append(
            f"| {m['protect']} | {m['dp'] or 'none'} | {eps} | {m['model_test_auc']:.3f} | "
            f"{m['auc_loss_threshold']:.3f} | {m['auc_calibrated']:.3f} | "
            f"{m['members']} / {m['non_members']} |"
        )
    return "\n".join(lines) + "\n"


REFERENCES = {
    "control": "victim-absent control: the same round (protocol, sites, batch, labels) with the "
    "sites holding other training images of the victims' labels, the same attack, scored "
    "against the victims with the same matching; mean +- sd over draws",
    "verdict": "leaks when the PSNR exceeds the control's mean by more than max(2 sd, 0.5 dB), "
    "else at reference",
    "unrelated_matched": "as many unrelated test images as reconstructed ones, matched to the "
    "true images like a reconstruction (mean over disjoint draws)",
    "dataset_mean": "the training set's mean image (victims left out), matched the same way",
    "unrelated": "each true image against 16 unrelated test images, one to one, averaged",
}


def _inversion_line(r: dict) -> str:
    """One Markdown row of the inversion table."""
    refs = r.get("references", {})
    each = ", ".join(f"{p['psnr']:.1f}" for p in r["pairs"])
    control, verdict = "-", "-"
    if "control" in refs:
        c = refs["control"]
        control = f"{c['psnr']:.2f} +- {c['sd']:.2f} ({', '.join(f'{v:.1f}' for v in c['values'])})"
        verdict = f"**{r['verdict']}** ({r['gain_db']:+.2f} / {r['margin_db']:.2f})"
    matched = f"{refs['unrelated_matched']['psnr']:.2f}" if refs else "-"
    mean = f"{refs['dataset_mean']['psnr']:.2f}" if refs else "-"
    return (
        f"| {r['scenario']} | {r['server_sees']} | {r['images']} | {r['labels']} | "
        f"{r['psnr_mean']:.2f} ({each}) | {r['ssim_mean']:.3f} | {control} | {verdict} | "
        f"{matched} | {mean} | {r['unrelated']['psnr']:.2f} | {r['seconds']:.0f} |"
    )


def _grid_png(path: Path, row: dict) -> Path:
    """True images (top) above their matched reconstructions (bottom), PSNR in the titles."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    truth, recon, pairs = row["_images"]
    columns = max(len(pairs), 1)
    fig, axes = plt.subplots(2, columns, figsize=(1.8 * columns, 4), squeeze=False)
    for k, pair in enumerate(pairs):
        for ax, image, title in (
            (axes[0, k], truth[pair["truth"]], "original"),
            (axes[1, k], recon[pair["recon"]], f"{pair['psnr']:.1f} dB"),
        ):
            ax.imshow(np.clip(image[0], 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.suptitle(row["scenario"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _print_summary(doc: dict, console) -> None:
    from rich.table import Table

    table = Table(title="Gradient inversion", header_style="bold")
    for col in ("scenario", "server sees", "PSNR dB", "control dB", "verdict", "unrelated dB"):
        table.add_column(col, justify="right")
    for r in doc["inversion"]:
        control = r.get("references", {}).get("control")
        table.add_row(r["scenario"], r["server_sees"], f"{r['psnr_mean']:.2f}",
                      f"{control['psnr']:.2f} +- {control['sd']:.2f}" if control else "-",
                      r.get("verdict", "-"), f"{r['unrelated']['psnr']:.2f}")  # fmt: skip
    console.print(table)
    table = Table(title="Membership inference (attack AUC)", header_style="bold")
    for col in ("protection", "DP", "loss threshold", "calibrated", "model test AUC"):
        table.add_column(col, justify="right")
    for m in doc["membership"]:
        table.add_row(m["protect"], m["dp"] or "none", f"{m['auc_loss_threshold']:.3f}",
                      f"{m['auc_calibrated']:.3f}", f"{m['model_test_auc']:.3f}")  # fmt: skip
    console.print(table)
