"""Flower 1.42's own components across a :class:`~netns.NetnsLab`: a SuperLink with TLS and
SuperNode authentication in the hub, SuperNodes in the site namespaces, the Flower CLI
(``flwr``) talking to the SuperLink's Control API from the hub.

Flower 1.42 serves its Fleet, Control and Runtime APIs on one HTTPS port (``--host``,
``--port``); ``--enable-supernode-auth`` refuses to start without TLS, disables the Fleet
API's self-registration and accepts only SuperNodes whose public key was registered through
the Control API (``flwr supernode register``); each Fleet request is signed with the node's
key (``flwr/superlink/routers/fleet/node_auth.py``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from netns import Host, LabError, NetnsLab

from fedshield.deploy.certs import write_dev_certificates, write_supernode_keys

__all__ = ["FlowerLab"]

BIN = Path(sys.executable).parent  # flwr's executables start each other by name


class FlowerLab:
    """The Flower side of a lab: TLS material, the SuperLink, SuperNodes, ``flwr`` calls."""

    def __init__(self, lab: NetnsLab, work: Path, *, port: int = 9093) -> None:
        self.lab, self.work, self.port = lab, Path(work), port
        self.address = f"{lab.hub.address}:{port}"
        self.tls = write_dev_certificates(self.work / "tls", addresses=[lab.hub.address], sites=0)
        home = self.work / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "lab"\n\n[superlink.lab]\n'
            f'address = "{self.address}"\nroot-certificates = "{self.tls.ca_cert}"\n'
        )
        self.env = {
            **os.environ,
            "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
            "FLWR_HOME": str(home),
            "PYTHONUNBUFFERED": "1",
        }

    def start_superlink(self, timeout: float = 60) -> None:
        """The SuperLink in the hub, TLS and SuperNode authentication on, bound to the hub's
        bridge address only; returns once site 0 can reach it."""
        self.lab.start(
            self.lab.hub,
            "superlink",
            [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(self.tls.ca_cert),
             "--ssl-certfile", str(self.tls.server_cert), "--ssl-keyfile", str(self.tls.server_key),
             "--enable-supernode-auth", "--host", self.lab.hub.address, "--port",
             str(self.port), "--disable-runtime-dependency-installation"],
            env=self.env,
        )  # fmt: skip
        self.lab.wait_for_port(self.lab.sites[0], self.lab.hub.address, self.port, timeout)

    def flwr(self, *args: str, timeout: float = 120) -> dict:
        """Run ``flwr ARGS lab --format json`` in the hub; its JSON answer."""
        done = self.lab.call(
            self.lab.hub, [str(BIN / "flwr"), *args, "lab", "--format", "json"],
            env=self.env, timeout=timeout,
        )  # fmt: skip
        try:
            answer = json.loads(done.stdout[done.stdout.index("{") :])
        except ValueError:
            raise LabError(f"flwr {' '.join(args)}: {done.stdout}{done.stderr}") from None
        if done.returncode != 0 or not answer.get("success"):
            raise LabError(f"flwr {' '.join(args)} failed: {answer}")
        return answer

    def supernode_key(self, site: int, *, register: bool) -> tuple[Path, int | None]:
        """A fresh SuperNode key pair; registered with the SuperLink when ``register``: the
        private key's path and the node id the SuperLink gave it."""
        folder = self.work / "supernode-keys"
        folder.mkdir(parents=True, exist_ok=True)
        private, public = write_supernode_keys(folder, site)
        if not register:
            return private, None
        return private, int(self.flwr("supernode", "register", str(public))["node-id"])

    def start_supernode(
        self, host: Host, name: str, private_key: Path, node_config: str | None = None
    ) -> None:
        """A SuperNode in ``host``: TLS towards the hub (the test CA as root) and signed with
        ``private_key``."""
        args = [str(BIN / "flower-supernode"), "--superlink", self.address,
                "--root-certificates", str(self.tls.ca_cert),
                "--auth-supernode-private-key", str(private_key)]  # fmt: skip
        if node_config:
            args += ["--node-config", node_config]
        self.lab.start(host, name, args, env=self.env)

    def online(self) -> set[int]:
        """Ids of the SuperNodes the SuperLink lists as online."""
        nodes = self.flwr("supernode", "list")["nodes"]
        return {int(n["node-id"]) for n in nodes if n["status"] == "online"}

    def wait_online(self, nodes: set[int], timeout: float = 120) -> None:
        """Wait until every node in ``nodes`` is online."""
        deadline = time.monotonic() + timeout
        while not nodes <= (seen := self.online()):
            if time.monotonic() > deadline:
                raise LabError(f"nodes {sorted(nodes - seen)} not online in {timeout:.0f} s")
            time.sleep(1)
