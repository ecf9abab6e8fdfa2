"""fedshield on Flower across hosts: ``fedshield server`` (the SuperLink and the ServerApp)
in one Linux network namespace, ``fedshield site`` (a site process and its SuperNode) in one
namespace per site, joined only by the veth links the test creates; TLS with a CA made in the
test and SuperNode authentication on. Needs root (CI runs as root); see ``netns.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flower_lab import BIN, FlowerLab
from netns import NetnsLab, alive, unavailable

from fedshield.deploy.certs import write_dev_certificates
from fedshield.engine.experiment import RunConfig, enrol_sites, with_data_facts

pytestmark = [
    pytest.mark.flower,
    pytest.mark.skipif((why := unavailable()) is not None, reason=str(why)),
]


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
        key, node = flower.supernode_key(0, register=True)
        stranger, _ = flower.supernode_key(1, register=False)
        flower.start_supernode(lab.sites[0], "supernode0", key)
        flower.start_supernode(lab.sites[1], "supernode1", stranger)
        flower.wait_online({node})
        assert lab.processes["supernode1"].wait(timeout=60) != 0
        assert "[code: 2004] Failed to activate SuperNode" in lab.log("supernode1")
        refusal = f"{lab.sites[1].address}:"  # the SuperLink saw it come from site 1's host
        assert any(refusal in line and "activate-node HTTP/1.1\" 412" in line
                   for line in lab.log("superlink").splitlines()), lab.log("superlink")  # fmt: skip
        assert flower.online() == {node}
        # The SuperLink's certificate verifies against the test's CA, and only against it.
        for cafile, expected in (
            (str(flower.tls.ca_cert), "handshake TLSv1.3"),
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


def _toml(values: dict) -> str:
    """A TOML document of strings, numbers and lists, with one level of tables."""
    lines, tables = [], []
    for key, value in values.items():
        if isinstance(value, dict):
            tables += [f"[{key}]", *(f"{k} = {json.dumps(v)}" for k, v in value.items())]
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines + tables) + "\n"


def _configs(lab: NetnsLab, tmp_path: Path, config: RunConfig) -> tuple[Path, list[Path]]:
    """server.toml for the hub and one site.toml per site host: TLS material and SuperNode
    keys made here, the roster and identities from the enrolment; a site's file names only
    its own key, identity and logs."""
    enrolment = tmp_path / "enrolment"
    roster = enrol_sites(config, enrolment)
    run_json = tmp_path / "run.json"
    public = {k: v for k, v in config.as_dict().items() if k != "site_data"}  # a site's own
    run_json.write_text(json.dumps(public))
    n = len(lab.sites)
    tls = write_dev_certificates(tmp_path / "tls", addresses=[lab.hub.address], sites=n)
    keys = [tls.supernode_keys[i] for i in range(n)]
    address = f"{lab.hub.address}:9093"
    server = tmp_path / "server.toml"
    server.write_text(_toml({
        "roster": str(roster), "out": str(tmp_path / "flower"), "run_config": str(run_json),
        "superlink": {"address": address, "ca_cert": str(tls.ca_cert), "cert": str(tls.server_cert),
                      "key": str(tls.server_key), "supernode_keys": [str(p) for _, p in keys]},
        "deadlines": {"join": 300.0, "train": 120.0, "stage": 30.0},
    }))  # fmt: skip
    sites = []
    for i, (private, _) in enumerate(keys):
        sites.append(tmp_path / f"site{i}.toml")
        sites[-1].write_text(_toml({
            "site": i, "superlink": address, "ca_cert": str(tls.ca_cert), "auth_key": str(private),
            "roster": str(roster), "identity": str(enrolment / f"site{i}.identity"),
            "logs": str(tmp_path / f"site{i}-logs"), "run_config": str(run_json),
        }))  # fmt: skip
    return server, sites


def test_secagg_across_namespaces_with_tls_and_auth_unmasks_the_in_process_aggregate(tmp_path):
    """`fedshield server` in the hub and `fedshield site` on each of three site hosts: two
    secagg rounds give the in-process engine's unmasked aggregate and global model (SHA-256),
    every command exits 0, and every process of every host is gone after."""
    local = _in_process(tmp_path / "inprocess")
    config = with_data_facts(RunConfig(**{**local["config"], "transport": "flower"}))
    env = {**os.environ, "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")])}
    seen: set = set()
    with NetnsLab(sites=3, logs=tmp_path / "logs") as lab:
        server, sites = _configs(lab, tmp_path, config)
        fedshield = str(BIN / "fedshield")
        lab.start(lab.hub, "server", [fedshield, "server", "--config", str(server)], env=env)
        for i, site in enumerate(sites):
            lab.start(lab.sites[i], f"site{i}", [fedshield, "site", "--config", str(site)], env=env)
        deadline = time.monotonic() + 600
        while any(p.poll() is None for p in lab.processes.values()):
            seen |= lab.snapshot()
            assert time.monotonic() < deadline, "the deployment took over 600 s"
            time.sleep(0.5)
        codes = {name: p.returncode for name, p in lab.processes.items()}
        assert set(codes.values()) == {0}, (codes, lab.log("server")[-3000:])
    assert alive(seen) == [] and lab.leftovers() == []
    remote = json.loads((tmp_path / "flower" / "result.json").read_text())
    for theirs, mine in zip(remote["rounds"], local["rounds"], strict=True):
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
