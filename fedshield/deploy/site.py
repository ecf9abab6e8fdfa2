"""``fedshield site``: one hospital's side of a Flower deployment.

It starts this site's fedshield site process (its own data, model and protocol sessions; a
fresh relay key shared with the SuperNode's ClientApp only) and, once that listens on
loopback, the site's SuperNode: TLS towards the server's SuperLink (trusting the federation's
CA certificate) and authenticated by the site's SuperNode key. It serves until the run ends
(the server's last message ends the site process), or until SIGTERM or Ctrl-C; then it stops
both and deletes the relay key.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

from fedshield.deploy.config import SiteConfig
from fedshield.engine.flower.deploy import (
    FlowerRunError,
    ProcessGroup,
    executable,
    free_port,
    wait_for_port,
)
from fedshield.engine.flower.relay import write_key

__all__ = ["run_site"]

_SITE_START_S = 300.0  # the site process imports torch and loads (and caches) its data


def run_site(config: SiteConfig, *, stop: threading.Event | None = None) -> int:
    """Serve site ``config.site`` until the run ends (its exit status, 0 when the server
    ended it), or until ``stop`` is set (0).

    Raises:
        FlowerRunError: the site process failed to start or exited with an error, or the
            SuperNode exited (refused by the SuperLink, or unreachable past
            ``connect_timeout``); the message names the log to read.
    """
    stop = stop or threading.Event()
    config.logs.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="fedshield-site-"))  # mode 0700
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1"}
    try:
        with ProcessGroup(config.logs, env=env) as group:
            port, key_file = _start_site_process(group, config, workdir)
            _start_supernode(group, config, port, key_file)
            return _serve(group, config, stop)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # the relay key and the run's options


def _start_site_process(group: ProcessGroup, config: SiteConfig, workdir: Path):
    """The site process on a free loopback port; its port and relay key file."""
    run = workdir / "run.json"
    run.write_text(json.dumps(config.run.as_dict()))
    key_file = workdir / "relay.key"
    write_key(key_file)
    port = free_port()
    args = [sys.executable, "-m", "fedshield.engine.flower.site", "--config", str(run),
            "--site", str(config.site), "--port", str(port), "--key-file", str(key_file),
            "--roster", str(config.roster), "--identity", str(config.identity)]  # fmt: skip
    if config.data is not None:
        args += ["--data", str(config.data)]
    process = group.launch("site", args)
    try:
        wait_for_port(port, _SITE_START_S, process, "the site process")
    except FlowerRunError as exc:
        raise FlowerRunError(f"{exc}: see {config.logs / 'site.log'}") from None
    return port, key_file


def _start_supernode(group: ProcessGroup, config: SiteConfig, port: int, key_file: Path):
    """The SuperNode: TLS to the SuperLink, authenticated, relaying to the site process."""
    args = [executable("flower-supernode"), "--superlink", config.superlink,
            "--root-certificates", str(config.ca_cert),
            "--auth-supernode-private-key", str(config.auth_key),
            "--port", str(free_port()),  # its local Runtime API
            "--node-config", f'site-port={port} site-key-file="{key_file}"']  # fmt: skip
    if config.connect_timeout is not None:
        args += ["--max-wait-time", str(config.connect_timeout)]
    group.launch("supernode", args)


def _serve(group: ProcessGroup, config: SiteConfig, stop: threading.Event) -> int:
    site, node = group.processes["site"], group.processes["supernode"]
    while not stop.wait(0.2):
        if site.poll() is not None:
            if site.returncode != 0:
                raise FlowerRunError(
                    f"the site process exited with code {site.returncode}: see "
                    f"{config.logs / 'site.log'}"
                )
            return 0
        if node.poll() is not None:
            raise FlowerRunError(
                f"the SuperNode exited with code {node.returncode} (refused by the SuperLink "
                f"at {config.superlink}, or unreachable?): see {config.logs / 'supernode.log'}"
            )
    return 0
