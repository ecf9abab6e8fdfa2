"""``server.toml`` and ``site.toml``: what each host of a deployment is told, validated.

The formats are described in :mod:`fedshield.deploy`. Each loader raises
:class:`~fedshield.errors.ConfigError` naming the file and the key to fix.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass, fields, replace
from pathlib import Path

from fedshield.data.site_specs import SITE_DATA
from fedshield.deploy.toml_table import Table, load_toml
from fedshield.engine.experiment import RunConfig
from fedshield.engine.flower.deadlines import PHASES, Deadlines
from fedshield.errors import ConfigError

__all__ = [
    "ServerConfig",
    "SiteConfig",
    "SuperLinkSettings",
    "load_server_config",
    "load_site_config",
]


@dataclass(frozen=True)
class SuperLinkSettings:
    """The server's ``[superlink]`` table: start one (TLS certificate and key, the SuperNode
    public keys to register) or attach to a running one (``attach = true``)."""

    address: str  # host:port the SuperNodes and the flwr CLI reach (one HTTPS port)
    ca_cert: Path
    cert: Path | None
    key: Path | None
    supernode_keys: tuple[Path, ...]
    attach: bool
    listen: str  # host the SuperLink binds (default: the address's host)


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``fedshield server`` needs (no site's data or paths)."""

    source: Path
    superlink: SuperLinkSettings
    run: RunConfig
    roster: Path
    out: Path
    deadlines: Deadlines  # per phase, from the phase's start

    @property
    def join_timeout(self) -> float:
        """Seconds to wait for every site's SuperNode to come online (the ``join`` phase)."""
        return self.deadlines.join

    def run_config_entries(self) -> dict[str, float]:
        """The deadlines as Flower run-config entries (``train-timeout = 120.0``...)."""
        return self.deadlines.as_run_config()


@dataclass(frozen=True)
class SiteConfig:
    """Everything ``fedshield site`` needs: only this site's own paths."""

    source: Path
    site: int
    superlink: str  # the server's host:port
    ca_cert: Path
    auth_key: Path  # the SuperNode's authentication private key (OpenSSH format)
    roster: Path
    identity: Path
    data: Path | None
    run: RunConfig
    logs: Path
    connect_timeout: float | None  # give up when the SuperLink refuses or is unreachable

    def with_data(self, data: Path | None) -> SiteConfig:
        """This config with ``data`` (the command line's ``--data``) when given, checked
        against the run's ``dataset`` as :func:`load_site_config` checks ``data =``."""
        if data is None:
            return self
        data = Path(data).resolve()
        if not data.exists():
            raise ConfigError(f"--data {data}: no such file or folder")
        return _check_data(replace(self, data=data), "--data")


def load_server_config(path: Path) -> ServerConfig:
    """Read and check ``server.toml``."""
    path = Path(path).resolve()
    top = Table(load_toml(path), file=path)
    link = top.table("superlink", required=True)
    attach = link.take("attach", bool, default=False)
    address = _address(link, "address")
    settings = SuperLinkSettings(
        address=address,
        ca_cert=link.path("ca_cert", what="the CA certificate that signed the SuperLink's"),
        cert=None if attach else link.path("cert", what="the SuperLink's TLS certificate"),
        key=None if attach else link.path("key", what="the SuperLink's TLS private key"),
        supernode_keys=tuple(_key_paths(link)),
        attach=attach,
        listen=link.take("listen", str, default=address.rsplit(":", 1)[0].strip("[]")),
    )
    link.finish()
    run = _run_options(top)
    config = ServerConfig(
        source=path,
        superlink=settings,
        run=run,
        roster=top.path("roster", what="roster.json of `fedshield roster enrol`"),
        out=top.path("out", exists=False, what="folder for result.json and report.md"),
        deadlines=_deadlines(top.table("deadlines")),
    )
    top.finish()
    return config


def load_site_config(path: Path, *, data: Path | None = None) -> SiteConfig:
    """Read and check ``site.toml``; ``data``: the command line's ``--data``, which takes
    the place of the file's ``data =``."""
    path = Path(path).resolve()
    top = Table(load_toml(path), file=path)
    site = top.take("site", int, what="this site's id in the roster")
    if site < 0:
        raise top.error("site", f"a site id is at least 0, got {site}")
    timeout = top.take("connect_timeout", float | None, default=None)
    if timeout is not None and timeout <= 0:
        raise top.error("connect_timeout", f"give a positive number of seconds, got {timeout}")
    config = SiteConfig(
        source=path,
        site=site,
        superlink=_address(top, "superlink"),
        ca_cert=top.path("ca_cert", what="the CA certificate that signed the SuperLink's"),
        auth_key=top.path("auth_key", what="this SuperNode's authentication private key"),
        roster=top.path("roster", what="the federation's roster.json"),
        identity=top.path("identity", what="this site's identity key"),
        data=_data(top),
        run=_run_options(top),
        logs=top.path("logs", exists=False, default=str(path.parent / f"site{site}-logs")),
        connect_timeout=timeout,
    )
    top.finish()
    if site >= config.run.sites:
        raise top.error("site", f"site {site} is not below the run's {config.run.sites} sites")
    if data is not None:
        return config.with_data(data)
    return _check_data(config, f"{path}: data")


def _check_data(config: SiteConfig, where: str) -> SiteConfig:
    """``config`` when its data agrees with the run's ``dataset``: a site's own data spec
    exactly when the run is on the sites' own data (``"dataset": "site-data"``), so that no
    site silently trains on synthetic data, and every process builds the same model."""
    dataset = config.run.dataset
    if config.data is not None and dataset != SITE_DATA:
        raise ConfigError(
            f"{where}: this site has its own data, but the run's options say dataset "
            f'{dataset!r}: write "dataset": "{SITE_DATA}" (and classes) in the run\'s '
            "options, the same file at the server and every site"
        )
    if config.data is None and dataset == SITE_DATA:
        raise ConfigError(
            f"{where}: missing: the run is on the sites' own data (dataset {SITE_DATA!r}); "
            'give this site\'s data spec as data = "spec.yaml" (docs/data.md) or --data'
        )
    return config


def _data(top: Table) -> Path | None:
    """``data``: this site's data spec or folder (a path that exists)."""
    text = top.take("data", str | None, default=None)
    if text is None:
        return None
    path = (top.file.parent / Path(text).expanduser()).resolve()
    if not path.exists():
        raise top.error("data", f"{path} does not exist")
    return path


def _address(table: Table, key: str) -> str:
    """``host:port`` (a port from 1 to 65535)."""
    text = table.take(key, str, what="host:port of the SuperLink")
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise table.error(key, f"write host:port, e.g. 10.0.0.1:9093; got {text!r}")
    return text


def _key_paths(link: Table) -> list[Path]:
    """``supernode_keys``: the sites' SuperNode public keys (OpenSSH lines), each checked."""
    from fedshield.deploy.certs import load_supernode_public_key

    texts = link.take("supernode_keys", list[str], default=[])
    paths = []
    for text in texts:
        path = (link.file.parent / Path(text).expanduser()).resolve()
        try:
            load_supernode_public_key(path)
        except ConfigError as exc:
            raise link.error("supernode_keys", str(exc)) from None
        paths.append(path)
    if len(set(paths)) != len(paths):
        raise link.error("supernode_keys", "a key file is listed twice")
    return paths


def _deadlines(table: Table | None) -> Deadlines:
    """``[deadlines]``: seconds per phase (join, keys, train, stage, evaluate, shutdown)."""
    if table is None:
        return Deadlines()
    values = {phase: table.take(phase, float) for phase in PHASES if table.has(phase)}
    table.finish(f"the phases are {', '.join(PHASES)}")
    try:
        return Deadlines.from_mapping(values)
    except ConfigError as exc:
        raise table.error(None, str(exc)) from None


def _run_options(top: Table) -> RunConfig:
    """The run's public parameters: a ``[run]`` table of RunConfig options, or ``run_config``
    (a run JSON); the facts every process must share are required."""
    if top.has("run") == top.has("run_config"):
        raise top.error(None, "give the run's options either as a [run] table or as "
                        "run_config = \"run.json\", exactly one")  # fmt: skip
    if top.has("run_config"):
        source = top.path("run_config", what="the run's options as JSON")
        try:
            values = json.loads(source.read_text())
        except (OSError, ValueError) as exc:
            raise top.error("run_config", f"{source}: not a JSON object ({exc})") from None
        table = Table(values, file=source)
    else:
        table = top.table("run")
    hints = typing.get_type_hints(RunConfig)
    options = {}
    for f in fields(RunConfig):
        if table.has(f.name):
            options[f.name] = table.take(f.name, hints[f.name])
    if options.get("site_data") is not None:
        raise table.error("site_data", "no site's data paths here: a site names its own spec "
                          "as data = \"spec.yaml\" in its site.toml (or --data)")  # fmt: skip
    table.finish("the options of `fedshield run`, named as in run.json")
    try:
        run = RunConfig(**{**options, "transport": "flower"})
    except ConfigError as exc:
        raise table.error(None, str(exc)) from None
    needed = ["max_weight", "in_channels"]
    if run.task == "classification" and run.dataset != "synthetic":
        needed.append("classes")
    if run.task == "classification" and run.dataset == SITE_DATA:
        needed.append("class_names")
    missing = [name for name in needed if getattr(run, name) is None]
    if missing:
        raise table.error(missing[0], "missing: every process of a deployment needs "
                          f"{', '.join(missing)} in the run's options, the same everywhere "
                          "(max_weight: the largest site's training-set size; in_channels: "
                          "image channels; classes: how many labels; class_names: the "
                          "data specs' class list, in order)")  # fmt: skip
    return run
