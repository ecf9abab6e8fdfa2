"""fedshield on Flower across hosts: the SuperLink and the server in one Linux network
namespace, each site (its fedshield site process and its SuperNode) in its own, joined only by
the veth links the test creates; TLS with a CA made in the test and SuperNode authentication
on. Needs root (CI runs as root); see ``netns.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flower_lab import BIN, FlowerLab
from netns import NetnsLab, alive, unavailable

from fedshield.engine.experiment import RunConfig, enrol_sites, with_data_facts
from fedshield.engine.flower.deploy import _write_app
from fedshield.engine.flower.relay import write_key

pytestmark = [
    pytest.mark.flower,
    pytest.mark.skipif((why := unavailable()) is not None, reason=str(why)),
]

SITE_PORT = 7000  # every site process listens on its own namespace's loopback


def _tls_probe(address: str, port: int, cafile: str | None) -> str:
    """Code run inside a site namespace: a TLS handshake with the SuperLink, trusting only
    ``cafile`` (or the system's roots); prints the outcome."""
    return (
        "import socket, ssl\n"
        f"context = ssl.create_default_context(cafile={cafile!r})\n"
        "try:\n"
        f"    with socket.create_connection(({address!r}, {port}), timeout=10) as raw:\n"
        f"        with context.wrap_socket(raw, server_hostname={address!r}) as tls:\n"
        "            print('handshake', tls.version())\n"
        "except ssl.SSLCertVerificationError as exc:\n"
        "    print('refused', exc.verify_message)\n"
    )


def test_only_registered_supernodes_join_and_only_over_the_tests_tls(tmp_path):
    """Two site hosts: site 0's key is registered and its SuperNode comes online; site 1's
    is not, and the SuperLink refuses its activation, so it exits and is never listed."""
    with NetnsLab(sites=2, logs=tmp_path / "logs") as lab:
        flower = FlowerLab(lab, tmp_path)
        flower.start_superlink()
        key, node = flower.supernode_key("site0", register=True)
        stranger, _ = flower.supernode_key("site1", register=False)
        flower.start_supernode(lab.sites[0], "supernode0", key)
        flower.start_supernode(lab.sites[1], "supernode1", stranger)
        flower.wait_online({node})
        assert lab.processes["supernode1"].wait(timeout=60) != 0
        assert "[code: 2004] Failed to activate SuperNode" in lab.log("supernode1")
        refusal = f"{lab.sites[1].address}:"  # the SuperLink saw it come from site 1's host
        assert any(refusal in line and "activate-node HTTP/1.1\" 412" in line
                   for line in lab.log("superlink").splitlines()), lab.log("superlink")  # fmt: skip
        assert flower.online() == {node}
        # The SuperLink speaks only TLS, with the certificate of the test's CA for its address.
        for cafile, expected in (
            (str(flower.tls["ca"]), "handshake TLSv1.3"),
            (None, "refused unable to get local issuer certificate"),
        ):
            probe = _tls_probe(lab.hub.address, flower.port, cafile)
            done = lab.call(lab.sites[1], [sys.executable, "-c", probe])
            assert done.stdout.strip() == expected, done.stdout + done.stderr
        seen = lab.snapshot()
    assert alive(seen) == [] and lab.leftovers() == []


def _in_process(out: Path) -> dict:
    """``fedshield run`` on the in-process transport (two secagg rounds, three sites, one
    torch thread as each site process): its result."""
    subprocess.run(
        [str(BIN / "fedshield"), "run", "--protect", "secagg", "--sites", "3", "--rounds", "2",
         "--local-epochs", "1", "--threads", "1", "--out", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    return json.loads((out / "result.json").read_text())


def _start_sites(lab: NetnsLab, flower: FlowerLab, work: Path, config_path: Path) -> set[int]:
    """Site i's process and SuperNode in site i's namespace; the SuperNodes' node ids."""
    for i, host in enumerate(lab.sites):
        write_key(work / f"site{i}.key")
        lab.start(
            host, f"site{i}",
            [sys.executable, "-m", "fedshield.engine.flower.site", "--config", str(config_path),
             "--site", str(i), "--port", str(SITE_PORT), "--key-file", str(work / f"site{i}.key"),
             "--roster", str(work / "roster.json"), "--identity", str(work / f"site{i}.identity")],
            env=flower.env,
        )  # fmt: skip
    nodes = set()
    for i, host in enumerate(lab.sites):  # they load data and torch at once
        lab.wait_for_port(host, "127.0.0.1", SITE_PORT, timeout=180)
        key, node = flower.supernode_key(f"site{i}", register=True)
        node_config = f'site-port={SITE_PORT} site-key-file="{work / f"site{i}.key"}"'
        flower.start_supernode(host, f"supernode{i}", key, node_config)
        nodes.add(node)
    return nodes


def _wait_finished(lab: NetnsLab, events: Path, seen: set, timeout: float = 600) -> None:
    """Wait for the ServerApp's ``finished`` event; ``seen`` collects the lab's processes."""
    deadline = time.monotonic() + timeout
    while '"finished"' not in events.read_text():
        seen |= lab.snapshot()
        if lab.processes["flwr-run"].poll() is not None and '"finished"' not in events.read_text():
            time.sleep(1)
            if '"finished"' not in events.read_text():
                pytest.fail(f"the Flower run ended without results:\n{lab.log('flwr-run')}")
        if time.monotonic() > deadline:
            pytest.fail(f"no result in {timeout:.0f} s; events: {events.read_text()}")
        time.sleep(0.5)


def test_secagg_across_namespaces_with_tls_and_auth_unmasks_the_in_process_aggregate(tmp_path):
    """Two secagg rounds of three sites on three hosts give the in-process engine's unmasked
    aggregate and global model (SHA-256), and every process of every host is gone after."""
    local = _in_process(tmp_path / "inprocess")
    config = with_data_facts(RunConfig(**{**local["config"], "transport": "flower"}))
    work = tmp_path / "deploy"
    roster = enrol_sites(config, work)
    config_path, app, events = _write_app(work, config)
    out = tmp_path / "flower"
    seen: set = set()
    with NetnsLab(sites=3, logs=tmp_path / "logs") as lab:
        flower = FlowerLab(lab, tmp_path)
        flower.start_superlink()
        flower.wait_online(_start_sites(lab, flower, work, config_path))
        run_config = (
            f'config="{config_path}" out="{out}" events="{events}" roster="{roster}" '
            "stage-timeout=30.0 train-timeout=120.0"
        )
        lab.start(lab.hub, "flwr-run",
                  [str(BIN / "flwr"), "run", str(app), "lab", "--stream",
                   "--run-config", run_config], env=flower.env)  # fmt: skip
        _wait_finished(lab, events, seen)
        seen |= lab.snapshot()
    assert alive(seen) == [] and lab.leftovers() == []
    remote = json.loads((out / "rounds.json").read_text())
    for theirs, mine in zip(remote, local["rounds"], strict=True):
        assert theirs["clients"] == [0, 1, 2] and theirs["dropped"] == []
        digest = theirs["protocol"]["aggregate_sha256"]
        assert digest is not None and digest == mine["protocol"]["aggregate_sha256"]
        assert theirs["model_sha256"] == mine["model_sha256"]


def test_the_lab_leaves_nothing_behind_after_a_failure(tmp_path):
    """A test failing inside the lab still takes down its processes and namespaces."""
    with pytest.raises(KeyboardInterrupt), NetnsLab(sites=1, logs=tmp_path) as lab:
        lab.start(lab.sites[0], "sleeper", ["sleep", "600"])
        lab.start(lab.hub, "listener", [sys.executable, "-c", "import time; time.sleep(600)"])
        deadline = time.monotonic() + 30
        while len(seen := lab.snapshot()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # each enters its namespace when `ip netns exec` gets to it
        assert len(seen) == 2
        raise KeyboardInterrupt
    assert alive(seen) == [] and lab.leftovers() == []
    mine = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    assert f" {lab.hub.address}/" not in mine  # the lab's addresses never lived out here
