"""``fedshield server``, ``fedshield site`` and ``fedshield deploy certs``."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from functools import partial
from pathlib import Path

from rich.console import Console

__all__ = ["register"]


def register(sub, console: Console) -> None:
    """Add the deployment commands to the ``fedshield`` subparsers ``sub``."""
    server = sub.add_parser(
        "server",
        help="the coordinating host of a Flower deployment (SuperLink, the run, its results)",
        description="Start (or attach to) a SuperLink with TLS and SuperNode authentication, "
        "run fedshield's apps on it and write result.json and report.md (docs/deploy-flower.md)",
    )
    server.add_argument("--config", type=Path, required=True, help="server.toml")
    server.set_defaults(handler=partial(_cmd_server, console=console))

    site = sub.add_parser(
        "site",
        help="one hospital's side of a Flower deployment (its site process and SuperNode)",
        description="Serve this site's part of a Flower deployment until the run ends or "
        "SIGTERM (docs/deploy-flower.md)",
    )
    site.add_argument("--config", type=Path, required=True, help="site.toml")
    site.add_argument(
        "--data", type=Path, default=None, help="this site's data spec (instead of data =)"
    )
    site.set_defaults(handler=partial(_cmd_site, console=console))

    deploy = sub.add_parser("deploy", help="deployment helpers")
    actions = deploy.add_subparsers(dest="action", required=True)
    certs = actions.add_parser(
        "certs",
        help="test/development TLS certificates and SuperNode keys",
        description="Write a CA, the SuperLink's TLS certificate and one SuperNode "
        "authentication key pair per site (for trying a deployment out; use your own PKI "
        "in production)",
    )
    certs.add_argument("--out", type=Path, required=True, help="folder for the new files")
    certs.add_argument(
        "--server-address", action="append", required=True, metavar="HOST",
        help="an IP address or DNS name the SuperLink is reached at (repeatable)",
    )  # fmt: skip
    certs.add_argument("--sites", type=int, default=0, help="SuperNode key pairs to make")
    certs.set_defaults(handler=partial(_cmd_certs, console=console))


def _cmd_certs(args: argparse.Namespace, console: Console) -> int:
    from fedshield.deploy.certs import write_dev_certificates

    made = write_dev_certificates(args.out, addresses=args.server_address, sites=args.sites)
    console.print(f"CA certificate (to every site and the server): {made.ca_cert}")
    console.print(f"SuperLink certificate and key: {made.server_cert}, {made.server_key}")
    for site, (private, public) in made.supernode_keys.items():
        console.print(f"site {site}: SuperNode key {private} (to that site only), {public}")
    return 0


def _cmd_server(args: argparse.Namespace, console: Console) -> int:
    from fedshield.cli import _environment, _print_tables
    from fedshield.deploy.config import load_server_config
    from fedshield.deploy.server import run_server
    from fedshield.report import progress_bar, run_result, write_run

    config = load_server_config(args.config)
    run = config.run
    console.print(
        f"[bold]fedshield server[/]: {run.sites} sites, protection [cyan]{run.protect}[/], "
        f"{run.rounds} rounds, SuperLink {config.superlink.address} → {config.out}"
    )
    start = time.perf_counter()
    _sigterm_interrupts()
    with progress_bar(console) as progress:
        task = progress.add_task("starting the SuperLink", total=run.rounds)
        rounds = run_server(config, on_event=partial(_show, progress, task))
    result = run_result(run.as_dict(), rounds, rounds[-1]["per_site"], _environment(run))
    _print_tables(result)
    paths = write_run(config.out, result)
    console.print(
        f"done in {time.perf_counter() - start:.1f} s; wrote " + ", ".join(map(str, paths))
    )
    return 0


def _show(progress, task, event: dict) -> None:
    """One progress event of ``fedshield server`` on the rich progress display."""
    from fedshield.cli import show_round_event

    if event.get("event") == "superlink":
        progress.update(task, description="SuperLink up; registering the sites' keys")
    elif event.get("event") == "waiting":
        progress.update(task, description=f"sites online: {event['online']}/{event['sites']}")
    else:
        show_round_event(progress, task, event)


def _cmd_site(args: argparse.Namespace, console: Console) -> int:
    from fedshield.deploy.config import load_site_config
    from fedshield.deploy.site import run_site

    config = load_site_config(args.config, data=args.data)
    console.print(
        f"[bold]fedshield site[/] {config.site}: SuperLink {config.superlink}, "
        f"data {config.data or config.run.dataset}; logs in {config.logs}"
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    status = run_site(config, stop=stop)
    console.print("stopped" if stop.is_set() else "the run is over")
    return status


def _sigterm_interrupts() -> None:
    """SIGTERM (a supervisor) ends ``fedshield server`` as Ctrl-C does: all it started stops."""

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
