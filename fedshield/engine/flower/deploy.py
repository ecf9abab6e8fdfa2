"""A whole Flower deployment on loopback: ``flower-superlink``, one site process and one
``flower-supernode`` per site, then ``flwr run`` of fedshield's apps; everything is torn down
afterwards, also on error or Ctrl-C.

Insecure (no TLS) is allowed here only because every address is 127.0.0.1; a real deployment
follows ``docs/deploy-flower.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from fedshield.engine.flower.deadlines import Deadlines
from fedshield.engine.flower.relay import write_key
from fedshield.errors import ConfigError, FedshieldError

__all__ = [
    "FlowerRunError",
    "LocalDeployment",
    "ProcessGroup",
    "executable",
    "follow_events",
    "free_port",
    "live_members",
    "run_on_flower",
    "wait_for_port",
    "write_app",
]

_APP_TOML = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedshield-flower-app"
version = "1.0.0"
description = "fedshield's protocols over Flower"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedshield"

[tool.flwr.app.components]
serverapp = "fedshield.engine.flower.apps:server_app"
clientapp = "fedshield.engine.flower.apps:client_app"

[tool.flwr.app.config]
config = ""
out = ""
events = ""
roster = ""
""" + "".join(f"{key} = {seconds}\n" for key, seconds in Deadlines().as_run_config().items())


class FlowerRunError(FedshieldError):
    """The Flower deployment failed to start or the run failed; the message says where."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def executable(name: str) -> str:
    found = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent),
                                                     os.environ.get("PATH", "")]))  # fmt: skip
    if found is None:
        raise ConfigError(
            f"{name} not found: install Flower with `pip install fedshield[flower]` "
            "(`make install` does)"
        )
    return found


def wait_for_port(
    port: int, timeout: float, process: subprocess.Popen, name: str, host: str = "127.0.0.1"
) -> None:
    """Return once ``host:port`` accepts connections; FlowerRunError if ``process`` exits
    first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FlowerRunError(f"{name} exited with code {process.returncode}")
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise FlowerRunError(f"{name} did not open port {port} within {timeout:.0f} s")


@dataclass
class ProcessGroup:
    """Started processes, each in its own process group, with its log ``workdir/<name>.log``.

    Use as a context manager: :meth:`stop` ends every process and its children.
    """

    workdir: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    env: dict = field(default_factory=lambda: dict(os.environ))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def launch(self, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        """Start ``args`` as ``name`` (stdout and stderr to its log)."""
        log = (self.workdir / f"{name}.log").open("w")
        process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env or self.env,
            start_new_session=True,  # its own process group: stop() takes its children too
        )
        self.processes[name] = process
        return process

    def stop(self) -> None:
        """Terminate every process group (children included), then kill what remains."""
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        deadline = time.monotonic() + 10  # SIGKILL is delivered asynchronously
        while live_members(self.pids()) and time.monotonic() < deadline:
            time.sleep(0.05)

    def pids(self) -> list[int]:
        """Process ids of every started process group leader (tests check they are gone)."""
        return [p.pid for p in self.processes.values()]


@dataclass
class LocalDeployment(ProcessGroup):
    """Processes of one loopback deployment, in their own process groups.

    Use as a context manager; :meth:`kill_site` stops a site's SuperNode and process
    (a hospital going offline).
    """

    n_sites: int = 0

    def start(self, config_path: Path) -> None:
        """Start the SuperLink, the site processes and the SuperNodes; wait until they listen."""
        self.port = free_port()
        self.home = self.workdir / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            '[superlink]\ndefault = "local"\n\n[superlink.local]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        # flwr's executables start each other by name: the venv's bin goes first on PATH.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        self.env = {
            **os.environ,
            "PATH": path,
            "FLWR_HOME": str(self.home),
            "PYTHONUNBUFFERED": "1",
        }
        link = self.launch(
            "superlink",
            [executable("flower-superlink"), "--insecure", "--port", str(self.port),
             "--disable-runtime-dependency-installation"],
        )  # fmt: skip
        wait_for_port(self.port, 60, link, "flower-superlink")
        sites = []
        for site in range(self.n_sites):
            key_file = self.workdir / f"site{site}.key"
            write_key(key_file)
            site_port = free_port()
            identity = self.workdir / f"site{site}.identity"
            process = self.launch(
                f"site{site}",
                [sys.executable, "-m", "fedshield.engine.flower.site", "--config",
                 str(config_path), "--site", str(site), "--port", str(site_port),
                 "--key-file", str(key_file), "--roster", str(self.workdir / "roster.json"),
                 "--identity", str(identity)],
            )  # fmt: skip
            sites.append((site, site_port, key_file, process))
        for site, site_port, key_file, process in sites:  # they load data and torch at once
            wait_for_port(site_port, 180, process, f"site {site} process")
            node_config = f'site-port={site_port} site-key-file="{key_file}"'
            self.launch(
                f"supernode{site}",
                [executable("flower-supernode"), "--insecure", "--superlink",
                 f"127.0.0.1:{self.port}", "--port", str(free_port()),
                 "--node-config", node_config],
            )  # fmt: skip

    def kill_site(self, site: int) -> None:
        """SIGKILL a site's SuperNode and its site process (no goodbye, like a crash)."""
        for name in (f"supernode{site}", f"site{site}"):
            process = self.processes.get(name)
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def live_members(groups) -> list[int]:
    """Pids of live (not zombie) processes in the given process groups (Linux ``/proc``)."""
    groups, live = set(groups), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in groups and fields[0] != "Z":
            live.append(int(entry))
    return live


def run_on_flower(
    config,
    out: Path,
    *,
    on_event: Callable[[dict, LocalDeployment], None] | None = None,
    deadlines: Deadlines | None = None,
    stage_timeout: float | None = None,
    train_timeout: float | None = None,
    timeout: float = 3600.0,
) -> list[dict]:
    """Run ``config`` (a RunConfig) on a fresh loopback deployment; the round records.

    ``on_event(event, deployment)`` sees each progress event of the ServerApp as it happens
    (``{"round": r, "stage": s}`` when a phase opens, ``train`` and each protocol stage;
    ``{"round": r, "event": "done", ...}``). ``deadlines``: how long the server waits for the
    sites in each phase (default :class:`Deadlines`' defaults); ``stage_timeout`` and
    ``train_timeout``, where given, override its ``stage`` and ``train``. ``timeout``: for the
    whole run.
    """
    from fedshield.engine.experiment import enrol_sites, with_data_facts

    deadlines = deadlines or Deadlines()
    overrides = {"stage": stage_timeout, "train": train_timeout}
    deadlines = replace(deadlines, **{k: v for k, v in overrides.items() if v is not None})
    config = with_data_facts(config)  # public facts every process needs, read here once
    workdir = Path(tempfile.mkdtemp(prefix="fedshield-flower-"))
    config_path, app, events = write_app(workdir, config)
    roster = enrol_sites(config, workdir)  # roster.json and one identity key per site
    out = Path(out).resolve()
    with LocalDeployment(workdir, n_sites=config.sites) as deployment:
        deployment.start(config_path)
        run_config = (
            f'config="{config_path}" out="{out}" events="{events}" roster="{roster}" '
            + " ".join(f"{key}={seconds}" for key, seconds in deadlines.as_run_config().items())
        )
        runner = deployment.launch(
            "flwr-run",
            [executable("flwr"), "run", str(app), "local", "--stream",
             "--run-config", run_config],
            env=deployment.env,
        )  # fmt: skip
        follow_events(
            events, runner, lambda event: on_event and on_event(event, deployment),
            timeout=timeout, logs=workdir,
        )  # fmt: skip
    shutil.rmtree(workdir, ignore_errors=True)
    return json.loads((out / "rounds.json").read_text())


def follow_events(
    events: Path,
    runner: subprocess.Popen,
    on_event: Callable[[dict], object],
    *,
    timeout: float,
    logs: Path,
) -> None:
    """Hand each new line of the ServerApp's ``events`` file to ``on_event`` until its
    ``finished`` event; FlowerRunError when ``runner`` (``flwr run``) ends without it, or
    after ``timeout`` seconds (``logs``: where the message sends the reader)."""
    seen = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = events.read_text().splitlines()
        for line in lines[seen:]:
            event = json.loads(line)
            if event.get("event") == "failed":  # the ServerApp's own account of it
                raise FlowerRunError(f"the Flower run failed: {event['error']}; logs in {logs}")
            on_event(event)
            if event.get("event") == "finished":
                return
        seen = len(lines)
        if runner.poll() is not None:
            time.sleep(0.5)
            if "finished" not in events.read_text():
                raise FlowerRunError(f"the Flower run ended without results; logs in {logs}")
        time.sleep(0.1)
    raise FlowerRunError(f"the Flower run took longer than {timeout:.0f} s")


def write_app(workdir: Path, config) -> tuple[Path, Path, Path]:
    """The run config, the Flower app folder and the (empty) events file of a run."""
    config_path = workdir / "run.json"
    config_path.write_text(json.dumps(config.as_dict()))
    app = workdir / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(_APP_TOML)
    (app / "fedshield_flower_app.py").write_text('"""Components live in fedshield."""\n')
    events = workdir / "events.jsonl"
    events.touch()
    return config_path, app, events
