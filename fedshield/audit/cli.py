"""``fedshield audit [--quick] [--fuzz N] [--seed S] [--only PATTERN] [--out DIR]``.

Runs the protocol audits (:mod:`fedshield.audit.checks`) and, with ``--fuzz N``, N mutated
messages (:mod:`fedshield.audit.fuzz`) against the installed package; prints a pass/fail
table, writes ``audit.json`` into ``--out``, and exits with status 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

from rich import box
from rich.table import Table

from fedshield.audit.bed import AuditBed
from fedshield.audit.checks import CheckResult, run_checks, select
from fedshield.audit.fuzz import FuzzCounts, FuzzReport, fuzz
from fedshield.errors import ConfigError

__all__ = ["audit_document", "register", "run_command"]


def register(sub: argparse._SubParsersAction, console) -> argparse.ArgumentParser:
    """Add ``audit`` to the CLI's subcommands."""
    audit = sub.add_parser(
        "audit", help="check the protocols' claims and fuzz their messages (exit 1 on failure)"
    )
    audit.add_argument(
        "--quick", action="store_true", help="fewer sizes and dropout patterns (seconds)"
    )
    audit.add_argument(
        "--fuzz", type=int, default=0, metavar="N",
        help="also feed N mutated messages into every server and client session type",
    )  # fmt: skip
    audit.add_argument("--seed", type=int, default=0, help="seeds the test data and mutations")
    audit.add_argument(
        "--only", action="append", metavar="PATTERN",
        help="run only the checks whose names match (shell-style, repeatable; 'none': no "
        "check, for a fuzz alone), e.g. 'reject/secagg/*'",
    )  # fmt: skip
    audit.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="write audit.json into DIR"
    )
    audit.set_defaults(handler=lambda args: run_command(args, console))
    return audit


def run_command(args: argparse.Namespace, console, *, bed: AuditBed | None = None) -> int:
    """Run the audit the options describe on ``bed`` (default: the registry's sessions);
    print it, write it, and return the exit status (0 passed, 1 failed)."""
    if args.fuzz < 0:
        raise ConfigError(f"--fuzz takes a number of mutations >= 0, got {args.fuzz}")
    checks = [] if args.only == ["none"] else select(args.only)
    bed = bed or AuditBed(seed=args.seed)
    preset = "quick" if args.quick else "full"
    console.print(f"[bold]fedshield audit[/] ({preset}): {len(checks)} checks, "
                  f"{args.fuzz} mutated messages, seed {args.seed}")  # fmt: skip
    start = time.perf_counter()
    from fedshield.report import progress_bar

    with progress_bar(console) as progress:
        task = progress.add_task("audit", total=len(checks) + args.fuzz)

        def step(text: str) -> None:
            progress.update(task, advance=1, description=text)

        results = run_checks(bed, checks, quick=args.quick, seed=args.seed, on_step=step)
        report = fuzz(args.fuzz, seed=args.seed, bed=bed, on_step=step) if args.fuzz else None
    document = audit_document(results, report, quick=args.quick, seed=args.seed,
                              seconds=time.perf_counter() - start)  # fmt: skip
    _print(document, results, report, console)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "audit.json"
        path.write_text(json.dumps(document, indent=2) + "\n")
        console.print(f"wrote {path}")
    return 0 if document["passed"] else 1


def audit_document(
    results: list[CheckResult], report: FuzzReport | None, *, quick: bool, seed: int,
    seconds: float,
) -> dict:  # fmt: skip
    """The audit as plain data (``audit.json``)."""
    failed = [r.name for r in results if not r.passed]
    if report is not None and not report.passed:
        failed.append("fuzz")
    return {
        "command": "fedshield audit",
        "quick": quick,
        "seed": seed,
        "passed": not failed,
        "failed": failed,
        "seconds": round(seconds, 2),
        "checks": [r.as_dict() for r in results],
        "fuzz": None if report is None else report.as_dict(),
        "environment": _environment(),
    }


def _environment() -> dict:
    versions = {}
    for package in ("fedshield", "tenseal", "cryptography", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), **versions}


def _print(document: dict, results: list[CheckResult], report, console) -> None:
    if results:
        table = Table(title="Protocol audits", header_style="bold")
        for column, justify in (("check", "left"), ("result", "center"), ("s", "right"),
                                ("what it saw", "left")):  # fmt: skip
            table.add_column(column, justify=justify)
        for r in results:
            verdict = "[green]PASS[/]" if r.passed else "[bold red]FAIL[/]"
            table.add_row(r.name, verdict, f"{r.seconds:.1f}", r.detail)
        console.print(table)
    if report is not None:
        _print_fuzz(report, console)
    verdict = "[bold green]passed[/]" if document["passed"] else "[bold red]FAILED[/]"
    failed = f": {', '.join(document['failed'])}" if document["failed"] else ""
    console.print(f"audit {verdict} in {document['seconds']:.0f} s{failed}", soft_wrap=True)


_SHORT = {"mutations": "mutated", "completed": "done", "not_completed": "not done"}


def _print_fuzz(report: FuzzReport, console) -> None:
    sessions: dict[str, FuzzCounts] = {}
    for key, counts in sorted(report.by_target.items()):
        sessions.setdefault(key.split("/")[0], FuzzCounts()).add(counts)
    columns = ("mutations", "crashes", "escaped", "rejected", "accepted", "completed",
               "inexact", "aborted", "not_completed", "corrupted")  # fmt: skip
    title = f"Fuzz: {report.total.mutations} mutated messages (seed {report.seed})"
    table = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD,
                  caption="done: the honest round completed afterwards; not done: it did not "
                  "where the protocol tolerates one refused party (docs/audit.md)")  # fmt: skip
    table.add_column("session", no_wrap=True)
    for column in columns:
        label = _SHORT.get(column, column)
        table.add_column(label, justify="right", min_width=len(label), no_wrap=True)
    for name, counts in [*sessions.items(), ("all", report.total)]:
        cells = [str(getattr(counts, c)) for c in columns]
        for k in (1, 2, 8, 9):  # must be 0
            cells[k] = cells[k] if cells[k] == "0" else f"[bold red]{cells[k]}[/]"
        table.add_row(name, *cells)
    console.print(table)
    after = ", ".join(f"{mode} {verdict}" for mode, verdict in report.honest_after.items())
    console.print(f"honest rounds after the fuzz: {after}", soft_wrap=True)
    for example in report.crash_examples:
        console.print(f"[red]problem:[/] {example}", soft_wrap=True)
