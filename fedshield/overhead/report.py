"""The overhead bench's outputs: ratios to the peer and to plain, ``bench.json``, ``bench.md``
and log-scale PNG plots (one per measured column: value against ``n``, a line per protection
and model)."""

from __future__ import annotations

import json
from pathlib import Path

from fedshield.overhead.measure import PROTECTIONS

__all__ = ["COLUMNS", "add_ratios", "write_outputs"]

COLUMNS = (
    "client_s",
    "server_s",
    "bytes_up",
    "bytes_down",
    "bytes_down_with_model",
    "round_s",
    "critical_s",
)
PEERS = {"secagg": "flower-secagg+", "he-shared": "flare-he", "he-threshold": "flare-he"}


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return None if not top or not bottom else top / bottom


def add_ratios(rows: list[dict]) -> None:
    """Add ``vs_peer`` (peer / ours per column: above 1, ours is cheaper) to every measured
    cell of a protection with a peer, and ``vs_plain`` (ours / plain fp32: bytes_up and
    critical_s) to every measured cell; ``None`` (with ``vs_peer_reason``) where the other
    cell was not measured."""
    ok = {(r["protection"], r["model"], r["n"]): r for r in rows if r["status"] == "ok"}
    for row in rows:
        if row["status"] != "ok":
            continue
        plain = ok.get(("plain", row["model"], row["n"]), {})
        row["vs_plain"] = {f"{c}_over_plain": _ratio(row[c], plain.get(c))
                           for c in ("bytes_up", "critical_s")}  # fmt: skip
        peer_name = PEERS.get(row["protection"])
        if peer_name is None:
            continue
        peer = ok.get((peer_name, row["model"], row["n"]))
        row["peer"] = peer_name
        if peer is None:
            row["vs_peer"] = None
            row["vs_peer_reason"] = f"{peer_name} was not measured at this cell"
            continue
        row["vs_peer"] = {f"{c}_peer_over_ours": _ratio(peer[c], row[c]) for c in COLUMNS}


def write_outputs(out: Path, document: dict) -> list[Path]:
    """Write ``bench.json``, ``bench.md`` and the plots into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "bench.json", out / "bench.md"]
    paths[0].write_text(json.dumps(document, indent=2) + "\n")
    paths[1].write_text(markdown(document))
    for column in COLUMNS:
        paths.append(_plot(out / f"overhead-{column}.png", document["cells"], column))
    return paths


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(doc: dict) -> str:
    """The tables of ``bench.md``: every cell (measured, refused or skipped), the secure
    evaluation's count session, then the AUC."""
    return "\n".join(_cells_table(doc) + _evaluation_table(doc) + _auc_table(doc)) + "\n"


def _cells_table(doc: dict) -> list[str]:
    lines = [
        f"# fedshield bench overhead ({doc['preset']})", "",
        f"{doc['seconds']:.0f} s on {doc['environment'].get('cpus', '?')} CPUs. Per site and "
        "round; bytes: one protocol round; down B: the protocol's messages only (like for "
        "like, the ratio); down+model B: plus the model each framework sends a site per round; "
        "critical: per stage the slowest site plus the server. Ratios: peer / ours (above 1: "
        "ours cheaper).",
        "", "| protection | model | n | client s | server s | up B | down B | down+model B | "
        "round s | critical s | up / plain | peer | client × | server × | up × | down × | "
        "critical × |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in doc["cells"]:
        head = f"| {r['protection']} | {r['model']} | {r['n']} |"
        if r["status"] != "ok":
            lines.append(f"{head} {r['status']}: {r['reason']} |" + " |" * 13)
            continue
        v, p = r.get("vs_peer") or {}, r.get("vs_plain") or {}
        lines.append(
            f"{head} {r['client_s']:.4f} | {r['server_s']:.4f} | {r['bytes_up']:,.0f} | "
            f"{r['bytes_down']:,.0f} | {r['bytes_down_with_model']:,.0f} | {r['round_s']:.3f} | "
            f"{r['critical_s']:.4f} | {_fmt(p.get('bytes_up_over_plain'), '.3f')} | "
            f"{r.get('peer', '-')} | "
            + " | ".join(_fmt(v.get(f"{c}_peer_over_ours"), ".2f")
                         for c in ("client_s", "server_s", "bytes_up", "bytes_down", "critical_s"))
            + " |"
        )  # fmt: skip
    return lines


def _evaluation_table(doc: dict) -> list[str]:
    lines = [
        "", "## Secure evaluation: the round's count session",
        "", "The pooled metrics' counts (8,197 per site for a binary task, whatever the model) "
        "summed so the server learns only their sum; no peer has one (Flower's SecAgg+ and the "
        "FLARE way protect the update only). eval / train: the count session over the same "
        "protection's training round at that n, per model (critical s; bytes up).",
        "", "| protection | n | client s | server s | up B | down B | round s | critical s | "
        "eval / train critical | eval / train up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in doc.get("evaluation", []):
        head = f"| {r['protection']} | {r['n']} |"
        if r["status"] != "ok":
            lines.append(f"{head} {r['status']}: {r['reason']} |" + " |" * 7)
            continue
        vs = r["vs_train"]
        crit = ", ".join(f"{m} {_fmt(x.get('critical_s'), '.3f')}" for m, x in vs.items())
        up = ", ".join(f"{m} {_fmt(x.get('bytes_up'), '.3f')}" for m, x in vs.items())
        lines.append(
            f"{head} {r['client_s']:.4f} | {r['server_s']:.4f} | {r['bytes_up']:,.0f} | "
            f"{r['bytes_down']:,.0f} | {r['round_s']:.3f} | {r['critical_s']:.4f} | "
            f"{crit or '-'} | {up or '-'} |"
        )
    return lines


def _auc_table(doc: dict) -> list[str]:
    lines = [
        "",
        "## Final AUC of a short training per protection",
        "",
        "| protection | AUC | rounds | critical s / round | note |",
        "|---|---|---|---|---|",
    ]
    for name, a in doc["auc"].items():
        lines.append(
            f"| {name} | {_fmt(a.get('auc'), '.3f')} | {a.get('rounds', '-')} | "
            f"{_fmt(a.get('critical_path_s'), '.2f')} | {a.get('reason', '')} |"
        )
    return lines


def _plot(path: Path, cells: list[dict], column: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    models = sorted({c["model"] for c in cells})
    styles = ["-", "--", ":", "-."]
    for k, model in enumerate(models):
        for j, protection in enumerate(PROTECTIONS):
            ok = [c for c in cells if c["model"] == model and c["protection"] == protection
                  and c["status"] == "ok" and c[column] > 0]  # fmt: skip
            if ok:
                ax.plot([c["n"] for c in ok], [c[column] for c in ok], marker="o",
                        linestyle=styles[k % len(styles)], color=f"C{j}",
                        label=f"{protection} / {model}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="sites n", ylabel=column, title=f"{column} per round (log scale)")
    ax.grid(alpha=0.3, which="both")
    if ax.lines:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
