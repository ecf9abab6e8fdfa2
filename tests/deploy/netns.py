"""A private network of Linux network namespaces for multi-host tests.

:class:`NetnsLab` creates one ``hub`` namespace (the SuperLink and the server) and one
namespace per site, each with a unique random name, joins them with veth pairs whose hub ends
hang on a bridge inside the hub namespace, and assigns every host an address on one private
/24. Every link is created directly inside the lab's namespaces, so nothing appears in the
caller's namespace, and the hosts share no route with it: traffic can only flow between the
addresses the lab assigned. Processes run inside a host through ``ip netns exec``, each in its
own process group, its output in a log file.

On exit, also after a failure or Ctrl-C, the lab kills every process inside its namespaces
(``ip netns pids``, which also finds processes that left their group, such as the SuperLink's
detached ``flower-superexec``), deletes the namespaces (their veth pairs and bridge with them)
and checks that nothing remains: no namespace, no link, no live process.

Linux only, as root (``ip netns`` needs ``CAP_SYS_ADMIN``); :func:`unavailable` says why not.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Host", "LabError", "NetnsLab", "alive", "unavailable"]


class LabError(RuntimeError):
    """The lab could not be built, a command in it failed, or cleanup left something behind."""


@dataclass(frozen=True)
class Host:
    """One namespace of the lab and its address on the lab's bridge."""

    name: str  # a role: "hub", "site0", ...
    namespace: str
    address: str


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise LabError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


def unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root (CAP_SYS_ADMIN); CI runs the test as root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    probe = f"fsprobe-{secrets.token_hex(4)}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` is refused here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class NetnsLab:
    """A hub and ``sites`` site hosts on one private bridge; a context manager.

    Example::

        with NetnsLab(sites=3, logs=tmp_path) as lab:
            lab.start(lab.hub, "server", ["python", "-m", "http.server", "8000"])
            lab.call(lab.sites[0], ["curl", f"http://{lab.hub.address}:8000"])
    """

    def __init__(self, sites: int, logs: Path, *, subnet: str = "10.77.0") -> None:
        if not isinstance(sites, int) or not 1 <= sites <= 200:
            raise ValueError(f"sites must be an int in 1..200, got {sites!r}")
        parts = subnet.split(".")
        if len(parts) != 3 or not all(p.isdigit() and int(p) < 256 for p in parts):
            raise ValueError(f"subnet must be the first three octets of a /24, got {subnet!r}")
        self.tag = secrets.token_hex(3)  # unique names: parallel labs never collide
        self.logs = Path(logs)
        self.hub = Host("hub", f"fs-{self.tag}-hub", f"{subnet}.1")
        self.sites = [
            Host(f"site{i}", f"fs-{self.tag}-s{i}", f"{subnet}.{10 + i}") for i in range(sites)
        ]
        self.processes: dict[str, subprocess.Popen] = {}
        self._made: list[str] = []  # namespaces created, deleted in reverse order

    @property
    def hosts(self) -> list[Host]:
        return [self.hub, *self.sites]

    @property
    def bridge(self) -> str:
        return f"fsbr{self.tag}"

    def veth(self, i: int) -> tuple[str, str]:
        """The hub end and the site end of site ``i``'s link (names of at most 15 bytes)."""
        return f"fs{self.tag}h{i}", f"fs{self.tag}s{i}"

    def __enter__(self) -> NetnsLab:
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _build(self) -> None:
        for host in self.hosts:
            _ip("netns", "add", host.namespace)
            self._made.append(host.namespace)
            _ip("-n", host.namespace, "link", "set", "lo", "up")
        hub = self.hub.namespace
        _ip("-n", hub, "link", "add", self.bridge, "type", "bridge")
        _ip("-n", hub, "addr", "add", f"{self.hub.address}/24", "dev", self.bridge)
        _ip("-n", hub, "link", "set", self.bridge, "up")
        for i, site in enumerate(self.sites):
            hub_end, site_end = self.veth(i)
            # Both ends are born inside the lab's namespaces, never in the caller's.
            _ip("link", "add", hub_end, "netns", hub, "type", "veth",
                "peer", "name", site_end, "netns", site.namespace)  # fmt: skip
            _ip("-n", hub, "link", "set", hub_end, "master", self.bridge)
            _ip("-n", hub, "link", "set", hub_end, "up")
            _ip("-n", site.namespace, "addr", "add", f"{site.address}/24", "dev", site_end)
            _ip("-n", site.namespace, "link", "set", site_end, "up")

    def start(
        self, host: Host, name: str, args: list[str], env: dict | None = None
    ) -> subprocess.Popen:
        """Start ``args`` inside ``host`` in its own process group; output to ``name``.log."""
        if name in self.processes:
            raise ValueError(f"a process named {name!r} was already started")
        with (self.logs / f"{name}.log").open("w") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", host.namespace, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def call(
        self, host: Host, args: list[str], *, env: dict | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """Run a short command inside ``host``; its completed process (output as text)."""
        return subprocess.run(
            ["ip", "netns", "exec", host.namespace, *args],
            capture_output=True, text=True, env=env, timeout=timeout,
        )  # fmt: skip

    def wait_for_port(self, host: Host, address: str, port: int, timeout: float) -> None:
        """Wait until ``address:port`` accepts a TCP connection as seen from inside ``host``
        (a process there listening on its own loopback, or another host across the bridge)."""
        probe = (
            "import socket, sys, time\n"
            f"deadline = time.monotonic() + {float(timeout)}\n"
            "while time.monotonic() < deadline:\n"
            "    with socket.socket() as s:\n"
            "        s.settimeout(1)\n"
            f"        if s.connect_ex(({address!r}, {int(port)})) == 0:\n"
            "            sys.exit(0)\n"
            "    time.sleep(0.1)\n"
            "sys.exit(1)\n"
        )
        if self.call(host, [sys.executable, "-c", probe], timeout=timeout + 30).returncode:
            raise LabError(f"{address}:{port} did not accept from {host.name} in {timeout:.0f} s")

    def log(self, name: str) -> str:
        """What process ``name`` wrote so far."""
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str) -> None:
        """SIGKILL process ``name`` and its process group (a host crashing, no goodbye)."""
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def pids(self) -> list[int]:
        """Every process living in one of the lab's namespaces."""
        found = []
        for namespace in self._made:
            done = _ip("netns", "pids", namespace, check=False)
            found += [int(p) for p in done.stdout.split()]
        return found

    def snapshot(self) -> set[tuple[int, int]]:
        """``(pid, start time)`` of every process now in the lab: :func:`alive` tells later
        which of them still run (the start time tells a reused pid apart)."""
        return {(pid, start) for pid in self.pids() if (start := _started(pid)) is not None}

    def close(self) -> None:
        """Kill every process in the lab, delete its namespaces, check nothing is left."""
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while any(p.poll() is None for p in self.processes.values()):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        deadline = time.monotonic() + 10
        while (stragglers := self.pids()) and time.monotonic() < deadline:
            for pid in stragglers:  # also those that left their process group
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        left = self.leftovers()
        for namespace in reversed(self._made):
            _ip("netns", "del", namespace, check=False)
        self._made.clear()
        left += self.leftovers()
        if left:
            raise LabError("the lab left things behind: " + "; ".join(left))

    def leftovers(self) -> list[str]:
        """What of the lab still exists: live processes, namespaces, links anywhere in the
        caller's namespace. Empty after :meth:`close`."""
        left = [f"process {pid} in a lab namespace" for pid in self.pids()]
        left += [f"process {name} (pid {p.pid})" for name, p in self.processes.items()
                 if p.poll() is None]  # fmt: skip
        names = {h.namespace for h in self.hosts}
        listed = _ip("netns", "list", check=False).stdout.split()
        if not self._made:  # after close: none of the lab's namespaces may remain
            left += [f"namespace {n}" for n in names.intersection(listed)]
        links = _ip("-o", "link", "show", check=False).stdout
        left += [f"link {n} in the caller's namespace"
                 for n in (self.bridge, *(e for i in range(len(self.sites)) for e in self.veth(i)))
                 if f" {n}:" in links or f" {n}@" in links]  # fmt: skip
        return left


def _started(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (``/proc``), None if it is gone or
    a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def alive(snapshot: set[tuple[int, int]]) -> list[int]:
    """Pids of a :meth:`NetnsLab.snapshot` still running (not zombies, not reused)."""
    return sorted(pid for pid, start in snapshot if _started(pid) == start)
