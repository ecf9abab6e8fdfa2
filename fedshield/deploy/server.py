"""``fedshield server``: the coordinating host's side of a Flower deployment.

It starts a SuperLink with TLS and SuperNode authentication (or attaches to a running one on
this host), registers the sites' SuperNode public keys through Flower's Control API, waits
until every site's SuperNode is online, then runs fedshield's Flower apps with ``flwr run``
and follows the ServerApp's progress events until the run's round records are written.
Everything it started is stopped afterwards, also on an error or Ctrl-C.

Flower 1.42 specifics (see ``docs/deploy-flower.md``): the SuperLink
serves its Fleet, Control and Runtime APIs on one HTTPS port; ``flwr`` reaches it through a
``FLWR_HOME/config.toml`` connection with ``root-certificates``; with
``--enable-supernode-auth`` a SuperNode may join only with a key registered by
``flwr supernode register``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fedshield.deploy.config import ServerConfig
from fedshield.engine.flower.deploy import (
    FlowerRunError,
    ProcessGroup,
    executable,
    follow_events,
    wait_for_port,
    write_app,
)

__all__ = ["CONNECTION", "run_server"]

CONNECTION = "fedshield"  # the flwr CLI's name for the SuperLink connection it writes
_LINK_START_S = 60.0


def run_server(
    config: ServerConfig,
    *,
    on_event: Callable[[dict], None] | None = None,
    timeout: float = 24 * 3600.0,
) -> list[dict]:
    """Run the deployment ``config`` describes; the round records (``rounds.json``).

    ``on_event`` sees ``{"event": "superlink"}``, ``{"event": "waiting", "online": k}``
    while the sites join, then the ServerApp's own events (``{"round": r, "stage": s}``,
    ``{"round": r, "event": "done", ...}``, ``{"event": "finished"}``).

    Raises:
        FlowerRunError: a process failed to start, a key was refused, the sites did not all
            join within the ``join`` deadline, or the run ended without results.
    """
    emit = on_event or (lambda _event: None)
    out = config.out
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="fedshield-server-"))
    try:
        with ProcessGroup(logs, env=_environment(workdir, config)) as group:
            _superlink(group, config)
            emit({"event": "superlink"})
            for key in config.superlink.supernode_keys:
                _register(group.env, key)
            _wait_for_sites(group.env, config, emit)
            config_path, app, events = write_app(workdir, config.run)
            runner = group.launch(
                "flwr-run",
                [executable("flwr"), "run", str(app), CONNECTION, "--stream",
                 "--run-config", _run_config(config, config_path, events)],
            )  # fmt: skip
            follow_events(events, runner, emit, timeout=timeout, logs=logs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return json.loads((out / "rounds.json").read_text())


def _environment(workdir: Path, config: ServerConfig) -> dict:
    """The environment of every process started: ``FLWR_HOME`` with one TLS connection to
    the SuperLink, the interpreter's bin first on ``PATH`` (Flower starts its own
    executables by name)."""
    home = workdir / "flwr-home"
    home.mkdir()
    link = config.superlink
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f"address = {json.dumps(link.address)}\n"
        f"root-certificates = {json.dumps(str(link.ca_cert))}\n"
    )
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "FLWR_HOME": str(home), "PYTHONUNBUFFERED": "1"}


def _superlink(group: ProcessGroup, config: ServerConfig) -> None:
    """Start the SuperLink (TLS, SuperNode authentication on), or check the one to attach to
    accepts connections."""
    link = config.superlink
    host, port = link.address.rsplit(":", 1)
    host = host.strip("[]")
    if link.attach:
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except OSError as exc:
            raise FlowerRunError(
                f"no SuperLink answers at {link.address} ({exc}); start it, or set "
                "attach = false to let fedshield server start one"
            ) from None
        return
    process = group.launch(
        "superlink",
        [executable("flower-superlink"), "--ssl-ca-certfile", str(link.ca_cert),
         "--ssl-certfile", str(link.cert), "--ssl-keyfile", str(link.key),
         "--enable-supernode-auth", "--host", link.listen, "--port", port,
         "--disable-runtime-dependency-installation"],
    )  # fmt: skip
    wait_for_port(int(port), _LINK_START_S, process, "flower-superlink", host=host)


def _flwr(env: dict, *args: str) -> dict:
    """One ``flwr`` CLI command against the SuperLink, its JSON answer."""
    done = subprocess.run(
        [executable("flwr"), *args, CONNECTION, "--format", "json"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    try:
        return json.loads(done.stdout[done.stdout.index("{") :])
    except ValueError:
        raise FlowerRunError(
            f"`flwr {' '.join(args)}` failed (exit {done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[-500:]}"
        ) from None


def _register(env: dict, key: Path) -> None:
    """Register one SuperNode public key (one registered before is accepted as it is)."""
    answer = _flwr(env, "supernode", "register", str(key))
    if not answer.get("success") and "already in use" not in answer.get("error-message", ""):
        raise FlowerRunError(
            f"the SuperLink refused SuperNode key {key}: {answer.get('error-message')}"
        )


def _wait_for_sites(env: dict, config: ServerConfig, emit) -> None:
    """Wait until ``config.run.sites`` SuperNodes are online (within the join deadline)."""
    deadline = time.monotonic() + config.join_timeout
    online = -1
    while True:
        nodes = _flwr(env, "supernode", "list").get("nodes", [])
        now = sum(node.get("status") == "online" for node in nodes)
        if now != online:
            online = now
            emit({"event": "waiting", "online": online, "sites": config.run.sites})
        if online >= config.run.sites:
            return
        if time.monotonic() > deadline:
            raise FlowerRunError(
                f"only {online} of {config.run.sites} sites' SuperNodes came online within "
                f"{config.join_timeout:.0f} s (deadlines.join); check that each site runs "
                "`fedshield site` and that its SuperNode key is in supernode_keys"
            )
        time.sleep(2.0)


def _run_config(config: ServerConfig, config_path: Path, events: Path) -> str:
    """``flwr run --run-config``: the paths the ServerApp reads and writes, the deadlines."""
    entries = {
        "config": str(config_path),
        "out": str(config.out),
        "events": str(events),
        "roster": str(config.roster),
        **config.run_config_entries(),
    }
    return " ".join(f"{key}={json.dumps(value)}" for key, value in entries.items())
