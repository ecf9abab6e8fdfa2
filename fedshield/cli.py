"""Command line: ``fedshield run``, ``fedshield experiment survey``, ``fedshield roster``,
``fedshield bench privacy``, ``fedshield audit``, and a deployment's ``fedshield server``,
``fedshield site`` and ``fedshield deploy certs``."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedshield.cli_options import add_data_options, add_privacy_options, add_protocol_options
from fedshield.errors import ConfigError, FedshieldError

__all__ = ["main"]

# A log or a pipe gets wide tables (rich would cut them at 80 columns); a terminal its width.
console = Console(width=None if sys.stdout.isatty() else 132)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedshield`` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except FedshieldError as exc:
        console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130


def _parser() -> argparse.ArgumentParser:
    from fedshield.aggregation import SERVER_OPTIMIZERS
    from fedshield.cli_roster import add_roster_command
    from fedshield.engine.experiment import RunConfig
    from fedshield.engine.models import MODELS
    from fedshield.engine.trainer import ALGORITHMS

    d = RunConfig()
    parser = argparse.ArgumentParser(prog="fedshield", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="federated training with protected updates")
    add_data_options(run, d)
    run.add_argument(
        "--sites", type=int, default=None,
        help=f"number of sites (default {d.sites}; with --site-data, the number of specs)",
    )  # fmt: skip
    run.add_argument("--rounds", type=int, default=d.rounds)
    run.add_argument("--local-epochs", type=int, default=d.local_epochs)
    run.add_argument("--algorithm", choices=ALGORITHMS, default=d.algorithm)
    run.add_argument("--mu", type=float, default=d.mu, help="FedProx proximal coefficient")
    run.add_argument("--fedsgd-lr", type=float, default=d.fedsgd_lr, help="FedSGD step size")
    run.add_argument("--server-opt", choices=sorted(SERVER_OPTIMIZERS), default=d.server_opt)
    run.add_argument(
        "--server-lr",
        type=float,
        default=None,
        help="server learning rate (default 1 for none, 0.01 for adaptive)",
    )
    run.add_argument(
        "--model",
        choices=sorted(MODELS),
        default=None,
        help="default: cnn-gn (GroupNorm) for synthetic, cnn (BatchNorm) otherwise and for "
        "fedbn, unet for --task segmentation",
    )
    add_protocol_options(run, d)
    add_privacy_options(run, d)
    run.add_argument(
        "--sparsify",
        default=None,
        metavar="randk:F|topk:F",
        help="keep a fraction F of the update: randk (same coordinates at every site, any "
        "protection) or topk (largest magnitudes; plain only)",
    )
    run.add_argument(
        "--error-feedback",
        action="store_true",
        help="carry what compression dropped into the next round (per-site residual)",
    )
    run.add_argument(
        "--train-all-coordinates",
        action="store_true",
        help="rand-k: sites train every coordinate and send the round's kept ones (the "
        "classic way); by default they train only the kept ones (docs/compression.md)",
    )
    run.add_argument(
        "--dropout",
        default="0",
        help="per-stage dropout probability, or a JSON schedule "
        "'{\"input\": [1]}' (stage -> client ids)",
    )
    run.add_argument(
        "--transport",
        choices=("inprocess", "flower"),
        default=d.transport,
        help="inprocess (default) or flower: a local Flower deployment (SuperLink and one "
        "SuperNode per site on loopback), torn down afterwards",
    )
    run.add_argument(
        "--deadline",
        default="",
        metavar="PHASE=S,...",
        help="--transport flower: seconds the server waits for the sites in a phase, from its "
        "start, before a site counts as dropped, e.g. train=120,stage=30 (phases: join, keys, "
        "train, stage, evaluate, shutdown; defaults 120, 60, 120, 30, 60, 5)",
    )
    run.add_argument(
        "--lr", type=float, default=None,
        help="local Adam learning rate (default 1e-3; 3e-3 for --task segmentation)",
    )  # fmt: skip
    run.add_argument("--batch-size", type=int, default=d.batch_size)
    run.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for training (default: torch's, one per core; 1 per Flower site); "
        "results are bit-identical for the same seed and thread count",
    )
    run.add_argument("--out", type=Path, default=None, help="output folder (runs/<timestamp>)")
    run.add_argument(
        "--compare-plain",
        nargs="?",
        const="cached",
        default=None,
        metavar="RESULT_JSON",
        help="end with this run against its plain fp32 twin (same data, seed and rounds): AUC, "
        "uplink and critical-path ratio; the twin is trained once and cached under "
        "runs/plain-twins/, or read from RESULT_JSON",
    )
    run.set_defaults(handler=_cmd_run)

    exp = sub.add_parser("experiment", help="reproduce a published experiment")
    exp_sub = exp.add_subparsers(dest="experiment", required=True)
    survey = exp_sub.add_parser("survey", help="Guan et al. 2024: Single/Cross/Mix/FedSGD/...")
    survey.add_argument("--dataset", default="synthetic")
    survey.add_argument("--seeds", type=int, default=3)
    survey.add_argument("--rounds", type=int, default=10)
    survey.add_argument("--local-epochs", type=int, default=2)
    survey.add_argument("--model", choices=sorted(MODELS), default="cnn-gn")
    survey.add_argument("--out", type=Path, default=None)
    survey.set_defaults(handler=_cmd_survey)
    add_roster_command(sub, console)
    from fedshield.attacks.bench import register as add_bench_commands

    add_bench_commands(sub, console)  # bench privacy (bench overhead joins its subparsers)
    from fedshield.audit.cli import register as add_audit_command

    add_audit_command(sub, console)  # audit: the protocols' claims, and a message fuzzer
    from fedshield.deploy.cli import register as add_deploy_commands

    add_deploy_commands(sub, console)  # server, site, deploy certs: a Flower deployment
    return parser


def _default_out(kind: str) -> Path:
    return Path("runs") / f"{kind}-{datetime.now():%Y%m%d-%H%M%S}"


def _cmd_run(args: argparse.Namespace) -> int:
    from fedshield.engine.experiment import build_federation, with_data_facts
    from fedshield.report import run_result, write_run

    config = _run_config(args)
    deadlines = _deadlines(args, config)  # a wrong value must cost no training either
    if args.compare_plain not in (None, "cached"):  # a wrong path must cost no training
        from fedshield.comparison import load_twin

        load_twin(config, Path(args.compare_plain))
    if config.threads and config.transport == "inprocess":
        import torch

        torch.set_num_threads(config.threads)
    out = args.out or _default_out("run")
    console.print(
        f"[bold]fedshield run[/]: {config.dataset}, {config.sites} sites, {config.algorithm}, "
        f"protection [cyan]{config.protect}[/], {config.rounds} rounds → {out}"
    )
    if config.sites == 1 and config.protect != "plain":
        console.print(
            f"[yellow]warning:[/] with one site, the {config.protect} sum the server learns is "
            "that site's own update: nothing is hidden (use at least 2 sites to protect it)",
            soft_wrap=True,
        )
    start = time.perf_counter()
    if config.transport == "flower":
        config = with_data_facts(config)  # what every process must agree on
        rounds = _run_flower(config, out, deadlines)
    else:
        fed = build_federation(config)
        console.print(f"model {config.model}: {fed.spec.dim:,} exchanged values per update")
        rounds = _run_local(fed, config)
    result = run_result(config.as_dict(), rounds, rounds[-1]["per_site"], _environment(config))
    _print_tables(result)
    if args.compare_plain:
        _compare_with_plain(result, config, args.compare_plain)
    paths = write_run(out, result)
    console.print(
        f"done in {time.perf_counter() - start:.1f} s; wrote " + ", ".join(str(p) for p in paths)
    )
    if "comparison" in result:
        from fedshield.comparison import comparison_line

        console.print(f"[bold]{comparison_line(result['comparison'])}[/]", soft_wrap=True)
    return 0


def _compare_with_plain(result: dict, config, source: str) -> None:
    """Add ``comparison`` (against the plain fp32 twin) to ``result``."""
    from fedshield.comparison import compare, plain_twin
    from fedshield.engine.experiment import build_federation
    from fedshield.report import run_result

    def train(twin) -> dict:
        rounds = _run_local(build_federation(twin), twin, quiet=True)
        return run_result(twin.as_dict(), rounds, rounds[-1]["per_site"], _environment(twin))

    found = plain_twin(config, source, train=train, announce=console.print)
    if found is not None:
        document, path = found
        result["comparison"] = {**compare(result, document), "plain_result": str(path)}


def _deadlines(args: argparse.Namespace, config):
    """``--deadline``'s per-phase deadlines (``None`` when not given)."""
    if not args.deadline:
        return None
    from fedshield.engine.flower.deadlines import Deadlines

    if config.transport != "flower":
        raise ConfigError("--deadline applies to --transport flower only")
    return Deadlines.parse(args.deadline)


def _run_config(args: argparse.Namespace):
    """The RunConfig the command line describes (every option has a field of that name)."""
    from dataclasses import fields

    from fedshield.engine.experiment import RunConfig, parse_dropout

    probability, schedule = parse_dropout(args.dropout)
    options = {f.name: getattr(args, f.name) for f in fields(RunConfig) if hasattr(args, f.name)}
    if options.get("sites") is None:  # --site-data: one site per spec
        options["sites"] = len(args.site_data) if args.site_data else RunConfig.sites
    return RunConfig(**{**options, "dropout": probability, "dropout_schedule": schedule})


def _print_tables(result: dict) -> None:
    from fedshield.report import console_columns, final_table

    columns = console_columns(result)
    table = Table(title="Rounds", header_style="bold")
    for _, title, _ in columns:
        table.add_column(title, justify="right")
    for row in result["rounds"]:
        table.add_row(*(cell(row) for _, _, cell in columns))
    console.print(table)
    titles, rows = final_table(result)
    summary = Table(title="Final test metrics", header_style="bold")
    for col in titles:
        summary.add_column(col, justify="right")
    for cells in rows:
        summary.add_row(*cells)
    console.print(summary)


def _environment(config) -> dict:
    """What the run's numbers depend on (``result.json``'s ``reproducibility``)."""
    from fedshield.engine.reproducibility import environment

    env = environment()
    if config.transport == "flower":  # the training ran in the site processes
        env["torch_threads"] = config.threads or 1
    return env


def _round_line(row: dict) -> str:
    quality = (
        f"Dice {row['dice']:.3f}, loss {row['loss']:.3f}"
        if "dice" in row
        else f"AUC {row['auc']:.3f}, accuracy {row['accuracy']:.3f}"
    )
    return (
        f"round {row['round']}: {quality}, "
        f"{row['bytes_up_per_client']:,.0f} B up per client"
        + (f", dropped {row['dropped']}" if row["dropped"] else "")
        + (f" [yellow](aborted: {row['aborted']})[/]" if row["aborted"] else "")
    )


def _run_local(fed, config, *, quiet: bool = False) -> list[dict]:
    rounds = []
    with _progress() as progress:
        task = progress.add_task("training", total=config.rounds * config.sites)
        for r in range(config.rounds):
            progress.update(task, description=f"round {r + 1}/{config.rounds}")
            row = fed.run_round(on_site_done=lambda _cid: progress.advance(task)).as_dict()
            rounds.append(row)
            if not quiet:
                progress.console.print(_round_line(row))
    return rounds


def _run_flower(config, out: Path, deadlines=None) -> list[dict]:
    from fedshield.engine.flower.deploy import run_on_flower

    with _progress() as progress:
        task = progress.add_task("starting the Flower deployment", total=config.rounds)

        def on_event(event: dict, _deployment) -> None:
            show_round_event(progress, task, event)

        return run_on_flower(config, out, on_event=on_event, deadlines=deadlines)


def show_round_event(progress, task, event: dict) -> None:
    """A Flower server's progress event (sites connected, a stage, a round done) on ``task``
    of a rich progress display (``fedshield run --transport flower``, ``fedshield server``)."""
    if event.get("event") == "sites":
        progress.update(task, description="sites connected")
    elif "stage" in event:
        progress.update(task, description=f"round {event['round']}: {event['stage']}")
    elif event.get("event") == "done":
        progress.advance(task)
        dropped = f", dropped {event['dropped']}" if event["dropped"] else ""
        progress.console.print(f"round {event['round']}: AUC {event['auc']:.3f}{dropped}")


def _cmd_survey(args: argparse.Namespace) -> int:
    from fedshield.engine.survey import STRATEGIES, SurveyConfig, run_survey, summarise
    from fedshield.report import write_survey

    config = SurveyConfig(
        dataset=args.dataset,
        seeds=args.seeds,
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        model=args.model,
    )
    if config.seeds < 1 or config.rounds < 1 or config.local_epochs < 1:
        raise FedshieldError("--seeds, --rounds and --local-epochs must be at least 1")
    out = args.out or _default_out("survey")
    console.print(f"[bold]survey experiment[/] on {config.dataset}, {config.seeds} seed(s) → {out}")
    steps = config.seeds * 5
    with _progress() as progress:
        task = progress.add_task("strategies", total=steps)
        raw = run_survey(
            config, on_step=lambda text: progress.update(task, advance=1, description=text)
        )
    summary = summarise(raw)
    table = Table(title="Survey: mean ± std over sites and seeds", header_style="bold")
    for col in ("strategy", "ACC", "AUC", "SEN", "SPE"):
        table.add_column(col, justify="right")
    for strategy in STRATEGIES:
        m = summary[strategy]
        table.add_row(
            strategy,
            *(
                f"{m[k]['mean']:.3f} ± {m[k]['std']:.3f}"
                for k in ("accuracy", "auc", "sensitivity", "specificity")
            ),
        )
    console.print(table)
    paths = write_survey(out, asdict(config), summary, raw)
    console.print("wrote " + ", ".join(map(str, paths)), soft_wrap=True)
    return 0


def _progress():
    from fedshield.report import progress_bar

    return progress_bar(console)


if __name__ == "__main__":
    sys.exit(main())
