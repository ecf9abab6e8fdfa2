"""``fedshield roster enrol`` and ``fedshield roster check``: a deployment's enrolment.

``enrol`` makes the federation's roster (public: every site's id and identity public key, the
smallest round, the pinned protocol parameters) and one private identity key per site, once;
``check`` validates a roster file, and that an identity file is the key a site holds on it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from functools import partial
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedshield.cli_options import add_data_options, add_protocol_options
from fedshield.crypto.identity import fingerprint
from fedshield.errors import ConfigError

__all__ = ["add_roster_command"]

_FIX = (
    "use the roster.json that `fedshield roster enrol` wrote, unchanged (every site and the "
    "server must hold the same file), or enrol again"
)


def add_roster_command(sub, console: Console) -> None:
    """Register ``roster enrol`` and ``roster check`` on the ``fedshield`` subparsers ``sub``
    (their output goes to ``console``)."""
    roster = sub.add_parser("roster", help="enrol a deployment's sites; check a roster file")
    actions = roster.add_subparsers(dest="action", required=True)
    enrol = actions.add_parser(
        "enrol",
        help="make roster.json and one identity key per site",
        description="Make the federation's roster (public) and one identity key per site "
        "(secret). The protocol options are those of `fedshield run`; the roster pins them.",
    )
    enrol.add_argument("--sites", type=int, default=argparse.SUPPRESS, help="number of sites")
    enrol.add_argument("--out", type=Path, required=True, help="folder for the new files")
    enrol.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="RUN_JSON",
        help="take every option from this run config (a deployment's run.json) instead",
    )
    enrol.add_argument(
        "--max-weight",
        type=float,
        default=argparse.SUPPRESS,
        help="public bound of a site's FedAvg weight, as in the run config (default: the "
        "largest site's sample count, read from the data options)",
    )
    add_protocol_options(enrol, None)
    add_data_options(enrol, None)
    enrol.set_defaults(handler=partial(_cmd_enrol, console=console))

    check = actions.add_parser("check", help="validate a roster file (and a site's identity)")
    check.add_argument("roster", type=Path, metavar="ROSTER", help="the roster.json to check")
    check.add_argument("--identity", type=Path, default=None, help="a site's identity file")
    check.add_argument("--site", type=int, default=None, help="the site that holds it")
    check.set_defaults(handler=partial(_cmd_check, console=console))


def _enrol_config(args: argparse.Namespace):
    """The RunConfig to enrol for: ``--config``'s, or the options given (every option
    has a RunConfig field of its name; only those given are in ``args``)."""
    from fedshield.engine.experiment import RunConfig

    given = {f.name: getattr(args, f.name) for f in fields(RunConfig) if hasattr(args, f.name)}
    if args.config is None:
        if "sites" not in given and given.get("site_data"):
            given["sites"] = len(given["site_data"])  # one site per data spec
        if "sites" not in given:
            raise ConfigError("roster enrol: give --sites N (or --config RUN_JSON)")
        return RunConfig(**given)
    if given:
        options = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ConfigError(f"--config takes every option from {args.config}: drop {options}")
    try:
        return RunConfig(**json.loads(args.config.read_text()))
    except OSError as exc:
        raise ConfigError(f"cannot read the run config {args.config}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{args.config} is not a run config (the JSON `config` of a result.json): {exc}"
        ) from None


def _cmd_enrol(args: argparse.Namespace, *, console: Console) -> int:
    from fedshield.engine.experiment import enrol_sites, with_data_facts
    from fedshield.protocols.roster import Roster

    config = _enrol_config(args)
    if config.max_weight is None:
        console.print(f"no --max-weight: reading {config.dataset} for the largest site's weight")
        config = with_data_facts(config)
    path = enrol_sites(config, args.out)
    roster = Roster.load(path)
    _print_roster(console, roster, path)
    table = Table(title=f"Hand out (files in {escape(str(args.out))})", header_style="bold")
    for column in ("file", "to", "secret"):
        table.add_column(column, no_wrap=column == "file")
    table.add_row(path.name, "every hospital and the server (the ServerApp)", "no")
    for site in roster.sites:
        hospital = f"hospital {site} only, over a channel you trust; then delete this copy"
        table.add_row(f"site{site}.identity", hospital, "[bold red]yes[/]")
    console.print(table)
    console.print(
        "Each hospital runs `fedshield roster check roster.json --identity site<i>.identity "
        "--site <i>` and confirms the fingerprint and the digest with you on a channel the "
        "server does not carry.",
        soft_wrap=True,
    )
    return 0


def _cmd_check(args: argparse.Namespace, *, console: Console) -> int:
    from fedshield.crypto.identity import Identity

    if (args.identity is None) != (args.site is None):
        raise ConfigError("give --identity FILE and --site I together (the site that holds it)")
    roster = _load_strict(args.roster)
    _print_roster(console, roster, args.roster)
    if args.identity is not None:
        identity = Identity.load(args.identity)
        roster.check_identity(args.site, identity.public_bytes, source=str(args.identity))
        console.print(
            f"[green]ok:[/] {args.identity} is site {args.site}'s identity key "
            f"(fingerprint {fingerprint(identity.public_bytes)})",
            soft_wrap=True,
        )
    return 0


def _load_strict(path: Path):
    """The roster in ``path`` (:meth:`Roster.load` refuses repeated JSON keys, non-canonical
    site ids and non-UTF-8 files), with the fix in the message."""
    from fedshield.protocols.roster import Roster

    try:
        return Roster.load(path)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; {_FIX}") from None


def _print_roster(console: Console, roster, path: Path) -> None:
    console.print(f"[bold]roster[/] {escape(str(path))}", soft_wrap=True)
    table = Table(header_style="bold")
    table.add_column("site", justify="right")
    table.add_column("identity key fingerprint")
    for site in roster.sites:
        table.add_row(str(site), fingerprint(roster.key(site)))
    console.print(table)
    console.print(f"min_sites: {roster.min_sites} of {len(roster.sites)}")
    parameters = ", ".join(f"{k}={v}" for k, v in sorted(roster.parameters.items()))
    console.print(f"parameters: {escape(parameters)}", soft_wrap=True)
    console.print(f"digest: {roster.digest.hex()}")
