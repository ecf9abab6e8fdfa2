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
import time
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
# Flower 1.42 refuses a SuperNode whose key is not registered, or whose key another online
# SuperNode holds, with this code, and the SuperNode then exits at once. The server registers
# the keys only once its SuperLink is up, so a site started first is refused for a few
# seconds: refusals are retried until connect_timeout (without one, for _REFUSED_S).
_REFUSED = "[code: 2004]"
_REFUSED_S = 120.0
_REFUSED_PAUSE_S = 3.0


def run_site(config: SiteConfig, *, stop: threading.Event | None = None) -> int:
    """Serve site ``config.site`` until the run ends (its exit status, 0 when the server
    ended it), or until ``stop`` is set (0).

    Raises:
        FlowerRunError: the site process failed to start or exited with an error (the
            message ends with its error), or the SuperNode exited: refused by the SuperLink
            past ``connect_timeout`` (a refusal is retried until then: the server registers
            the keys after its SuperLink starts), its TLS certificate does not verify, or
            unreachable past ``connect_timeout``; the message names the cause and the log.
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
            return _serve(group, config, stop, restart=lambda: _start_supernode(
                group, config, port, key_file))  # fmt: skip
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
        raise FlowerRunError(f"{exc}{_last_line(config.logs / 'site.log')}") from None
    return port, key_file


def _last_line(log: Path) -> str:
    """``: <the log's last line>; see <log>``: a failed process's error (a site process's
    last line is its exception, e.g. a DataError naming the file to fix)."""
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    last = f": {lines[-1].strip()[-1000:]}" if lines else ""
    return f"{last}; see {log}"


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


def _serve(group: ProcessGroup, config: SiteConfig, stop: threading.Event, restart) -> int:
    """Wait for the run's end (the site process exits with 0) or ``stop``; ``restart`` the
    SuperNode while the SuperLink refuses it, up to the connect deadline."""
    refused_until = time.monotonic() + (config.connect_timeout or _REFUSED_S)
    while not stop.wait(0.2):
        site, node = group.processes["site"], group.processes["supernode"]
        if site.poll() is not None:
            if site.returncode != 0:
                raise FlowerRunError(
                    f"the site process exited with code {site.returncode}"
                    f"{_last_line(config.logs / 'site.log')}"
                )
            return 0
        if node.poll() is not None:
            log = config.logs / "supernode.log"
            refused = _REFUSED in log.read_text(errors="replace")
            if refused and time.monotonic() < refused_until:
                if not stop.wait(_REFUSED_PAUSE_S):
                    restart()
                continue
            raise FlowerRunError(
                f"the SuperNode exited with code {node.returncode}: {_node_cause(config, log)}; "
                f"see {log}"
            )
    return 0


def _node_cause(config: SiteConfig, log: Path) -> str:
    """Why the SuperNode gave up, from its log, with what to check."""
    text = log.read_text(errors="replace")
    if _REFUSED in text:
        return (
            f"the SuperLink at {config.superlink} refused this SuperNode's key {config.auth_key}"
            ": it is not registered (is its .pub in the server's supernode_keys?), or another "
            "SuperNode with this key is online (is this site started twice?)"
        )
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return (
            f"the TLS certificate at {config.superlink} does not verify against ca_cert "
            f"{config.ca_cert} (another CA, or a certificate without this address)"
        )
    if "Giving up reconnection" not in text:
        return "see its log's last lines"
    wait = f" within connect_timeout {config.connect_timeout:g} s" if config.connect_timeout else ""
    return (
        f"no SuperLink answered at {config.superlink}{wait} (check the address and that "
        "`fedshield server` runs there)"
    )
