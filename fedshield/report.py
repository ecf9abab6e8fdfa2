"""Result files: ``result.json``, ``report.md`` and ``curves.png`` for a run; the survey's table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedshield import __version__

__all__ = [
    "CONSOLE_COLUMNS",
    "console_columns",
    "final_table",
    "format_cell",
    "progress_bar",
    "run_result",
    "write_run",
    "write_survey",
]

ROUND_COLUMNS = (
    ("round", "round", "{}"),
    ("accuracy", "acc", "{:.3f}"),
    ("auc", "AUC", "{:.3f}"),
    ("loss", "loss", "{:.3f}"),
    ("clients", "clients", "{}"),
    ("dropped", "dropped", "{}"),
    ("bytes_up_per_client", "up B/client", "{:,.0f}"),
    ("bytes_down_per_client", "down B/client", "{:,.0f}"),
    ("client_encode_s", "encode s", "{:.4f}"),
    ("server_aggregate_s", "aggregate s", "{:.4f}"),
    ("wall_s", "wall s", "{:.2f}"),
    ("critical_path_s", "critical path s", "{:.2f}"),
)
DICE_COLUMN = ("dice", "Dice", "{:.3f}")  # segmentation's, in place of accuracy and AUC


# The console table: the same numbers, narrower units so it fits an 80-column terminal.
CONSOLE_COLUMNS = (
    ("round", "round", lambda r: str(r["round"])),
    ("auc", "AUC", lambda r: format_cell("auc", r["auc"])),
    ("accuracy", "acc", lambda r: format_cell("accuracy", r["accuracy"])),
    ("loss", "loss", lambda r: format_cell("loss", r["loss"])),
    (
        "clients",
        "sites in",
        lambda r: f"{len(r['clients'])}/{len(r['clients']) + len(r['dropped'])}",
    ),
    ("bytes_up_per_client", "up kB", lambda r: f"{r['bytes_up_per_client'] / 1e3:,.1f}"),
    ("bytes_down_per_client", "down kB", lambda r: f"{r['bytes_down_per_client'] / 1e3:,.1f}"),
    ("client_encode_s", "enc ms", lambda r: f"{r['client_encode_s'] * 1e3:.2f}"),
    ("server_aggregate_s", "agg ms", lambda r: f"{r['server_aggregate_s'] * 1e3:.2f}"),
    ("wall_s", "wall s", lambda r: f"{r['wall_s']:.2f}"),
    ("critical_path_s", "crit s", lambda r: f"{r['critical_path_s']:.2f}"),
)


def _segmentation(result: dict) -> bool:
    return result.get("config", {}).get("task") == "segmentation"


def _round_columns(result: dict) -> tuple:
    """The report's round columns: Dice instead of accuracy and AUC for segmentation."""
    if not _segmentation(result):
        return ROUND_COLUMNS
    return (ROUND_COLUMNS[0], DICE_COLUMN, *ROUND_COLUMNS[3:])


def console_columns(result: dict) -> tuple:
    """:data:`CONSOLE_COLUMNS` for ``result``: Dice instead of AUC and accuracy for
    segmentation."""
    if not _segmentation(result):
        return CONSOLE_COLUMNS
    dice = ("dice", "Dice", lambda r: format_cell("dice", r.get("dice", math.nan)))
    return (CONSOLE_COLUMNS[0], dice, *CONSOLE_COLUMNS[3:])


def final_table(result: dict) -> tuple[list[str], list[list[str]]]:
    """The final test metrics: column titles, and a row of cells for the pooled metrics then
    each site (Dice and loss for segmentation; accuracy, AUC, sensitivity, specificity)."""
    if _segmentation(result):
        titles, keys = ["site", "Dice", "loss"], ("dice", "loss")
    else:
        titles = ["site", "accuracy", "AUC", "sensitivity", "specificity"]
        keys = ("accuracy", "auc", "sensitivity", "specificity")
    final = result["final"]
    rows = [
        [name, *(format_cell("auc", m.get(k, math.nan)) for k in keys)]
        for name, m in [("pooled", final), *final["per_site"].items()]
    ]
    return titles, rows


def progress_bar(console) -> Progress:
    """The progress bar of long work (a rich ``Progress`` on ``console``)."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def format_cell(key: str, value) -> str:
    """A round value as it appears in tables."""
    fmt = dict((k, f) for k, _, f in (*ROUND_COLUMNS, DICE_COLUMN)).get(key, "{}")
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return fmt.format(value)


def run_result(
    config: dict, rounds: list[dict], final_per_site: dict, environment: dict | None = None
) -> dict:
    """The ``result.json`` document; ``environment`` is what reproducing it depends on."""
    last = rounds[-1]
    return {
        "fedshield_version": __version__,
        "config": config,
        "reproducibility": {
            **(environment or {}),
            "final_model_sha256": last.get("model_sha256"),
        },
        "rounds": rounds,
        "final": {
            **{k: last[k] for k in ("accuracy", "auc", "sensitivity", "specificity", "loss")},
            **({"dice": last["dice"]} if "dice" in last else {}),
            "per_site": final_per_site,
        },
    }


def write_run(out: Path, result: dict) -> list[Path]:
    """Write ``result.json``, ``report.md`` and ``curves.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "result.json", out / "report.md", out / "curves.png"]
    paths[0].write_text(json.dumps(_clean(result), indent=2, default=_jsonable) + "\n")
    paths[1].write_text(_run_markdown(result))
    _plot_curves(result["rounds"], paths[2], dice=_segmentation(result))
    return paths


def _run_markdown(result: dict) -> str:
    cfg, columns = result["config"], _round_columns(result)
    titles, rows = final_table(result)
    lines = [
        "# fedshield run",
        "",
        f"fedshield {result['fedshield_version']}: `{cfg['dataset']}`, {cfg['sites']} sites, "
        f"{cfg['algorithm']}, protection `{cfg['protect']}`, {cfg['rounds']} rounds, seed "
        f"{cfg['seed']}.",
        "",
        "| " + " | ".join(title for _, title, _ in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for r in result["rounds"]:
        lines.append("| " + " | ".join(format_cell(k, r[k]) for k, _, _ in columns) + " |")
    lines += ["", "## Final test metrics", "", "| " + " | ".join(titles) + " |"]
    lines.append("|" + "---|" * len(titles))
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    if "comparison" in result:
        c = result["comparison"]
        key, name = ("dice", "Dice") if "dice" in c else ("auc", "AUC")
        lines += ["", "## Against plain fp32", "", "| | this run | plain fp32 twin | ratio |",
                  "|---|---|---|---|",
                  f"| final {name} | {c[key]:.4f} | {c[f'plain_{key}']:.4f} | "
                  f"{c[f'{key}_gap']:+.4f} |",
                  f"| uplink per client | {c['bytes_up_per_client']:,.0f} B | "
                  f"{c['plain_bytes_up_per_client']:,.0f} B | {c['uplink_ratio']:.3f}x |",
                  f"| critical path (median round) | {c['critical_path_s']:.3f} s | "
                  f"{c['plain_critical_path_s']:.3f} s | {_ratio(c['critical_path_ratio'])} |",
                  "", f"The twin: `{c['plain_result']}`; its critical path is this run's "
                  "training time plus the twin's protocol time (both train the same model).",
                  ]  # fmt: skip
    lines += _privacy_markdown(result["rounds"])
    lines += ["", "Configuration:", "", "```json", json.dumps(cfg, indent=2), "```", ""]
    env = result.get("reproducibility", {})
    if env:
        lines += [
            "Reproducibility (same configuration, versions, thread count and CPU: same bits):",
            "",
            *(f"- {key}: `{value}`" for key, value in env.items()),
            "",
        ]
    return "\n".join(lines)


def _privacy_markdown(rounds: list[dict]) -> list[str]:
    """The epsilon spent after each round, under site-level DP (nothing otherwise)."""
    if not rounds or rounds[0].get("dp_mode") is None:
        return []
    first = rounds[0]
    level = "record-level DP-SGD" if first["dp_mode"] == "dp-sgd" else "site-level DP-FedAvg"
    lines = ["", f"## Differential privacy ({level})", "",
             f"Mode `{first['dp_mode']}`, clip {first['clip']:g}, noise multiplier "
             f"{first['noise_multiplier']:.4g}, delta {first['delta']:g} (RDP accountant of "
             "`dp-accounting`; every round counts).", "",
             "| round | epsilon |", "|---|---|"]  # fmt: skip
    for r in rounds:
        spent = "inf" if r["epsilon"] is None else f"{r['epsilon']:.3f}"
        lines.append(f"| {r['round']} | {spent} |")
    return lines


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _plot_curves(rounds: list[dict], path: Path, *, dice: bool = False) -> None:
    xs = [r["round"] for r in rounds]
    up = [r["bytes_up_per_client"] / 1e3 for r in rounds]
    down = [r["bytes_down_per_client"] / 1e3 for r in rounds]
    private = bool(rounds) and rounds[0].get("dp_mode") is not None
    fig, axes = plt.subplots(1, 3 if private else 2, figsize=(15 if private else 10, 4))
    ax1, ax2 = axes[0], axes[1]
    if dice:
        ax1.plot(xs, [r.get("dice", math.nan) for r in rounds], marker="o", label="Dice")
    else:
        ax1.plot(xs, [r["accuracy"] for r in rounds], marker="o", label="accuracy")
        ax1.plot(xs, [r["auc"] for r in rounds], marker="s", label="ROC AUC")
    ax1.set(xlabel="round", ylabel="pooled test metric", ylim=(0, 1.02), title="Model quality")
    ax1.legend(loc="lower right")
    ax2.plot(xs, up, marker="o", label="up")
    ax2.plot(xs, down, marker="s", linestyle="--", label="down")
    ax2.set(xlabel="round", ylabel="kB per client", title="Traffic per client")
    ax2.set_ylim(0, 1.2 * max(up + down + [1e-3]))
    ax2.legend(loc="lower right")
    if private:
        spent = [float("nan") if r["epsilon"] is None else r["epsilon"] for r in rounds]
        axes[2].plot(xs, spent, marker="o", color="tab:red")
        axes[2].set(xlabel="round", ylabel="epsilon", ylim=(0, None),
                    title=f"Privacy spent (delta {rounds[0]['delta']:g})")  # fmt: skip
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_survey(out: Path, config: dict, summary: dict, raw: dict) -> list[Path]:
    """Write ``survey.json`` and ``survey.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {"fedshield_version": __version__, "config": config, "summary": summary, "raw": raw}
    paths = [out / "survey.json", out / "survey.md"]
    paths[0].write_text(json.dumps(_clean(doc), indent=2, default=_jsonable) + "\n")
    lines = [
        "# Survey experiment (Guan et al., Pattern Recognition 2024)",
        "",
        f"Dataset `{config['dataset']}`, two sites with acquisition shift, {config['seeds']} "
        "seed(s); mean ± std over sites and seeds.",
        "",
        "| strategy | ACC | AUC | SEN | SPE |",
        "|---|---|---|---|---|",
    ]
    for strategy, metrics in summary.items():
        cells = [
            f"{metrics[m]['mean']:.3f} ± {metrics[m]['std']:.3f}"
            for m in ("accuracy", "auc", "sensitivity", "specificity")
        ]
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    paths[1].write_text("\n".join(lines) + "\n")
    return paths


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _clean(value):
    """NaN and infinity become ``null`` so that any JSON reader accepts the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
