"""``fedshield server`` / ``fedshield site`` / ``fedshield deploy certs``: configs, certificates
and one loopback deployment with TLS and SuperNode authentication."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from in_process import in_process

from fedshield.cli import main
from fedshield.deploy import load_server_config, load_site_config, write_dev_certificates
from fedshield.engine.experiment import RunConfig, enrol_sites, with_data_facts
from fedshield.engine.flower.deploy import free_port
from fedshield.errors import ConfigError

_RUN = {"sites": 2, "protect": "secagg", "rounds": 1, "max_weight": 50.0, "in_channels": 1}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _toml(values: dict) -> str:
    """A flat TOML document (tables as ``[name]`` sections) from plain values."""
    lines, tables = [], []
    for key, value in values.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    for name, table in tables:
        lines += [f"[{name}]", *(f"{k} = {json.dumps(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return write_dev_certificates(
        tmp_path_factory.mktemp("certs"), addresses=["127.0.0.1", "fed.example.org"], sites=2
    )


def _server_values(certs, tmp_path) -> dict:
    roster = _write(tmp_path / "roster.json", "{}")
    return {
        "roster": str(roster),
        "out": str(tmp_path / "out"),
        "superlink": {
            "address": "127.0.0.1:9093",
            "ca_cert": str(certs.ca_cert),
            "cert": str(certs.server_cert),
            "key": str(certs.server_key),
            "supernode_keys": [str(p) for _, p in certs.supernode_keys.values()],
        },
        "run": dict(_RUN),
    }


def _site_values(certs, tmp_path) -> dict:
    for name in ("roster.json", "site0.identity"):
        _write(tmp_path / name, "x")
    return {
        "site": 0,
        "superlink": "127.0.0.1:9093",
        "ca_cert": str(certs.ca_cert),
        "auth_key": str(certs.supernode_keys[0][0]),
        "roster": "roster.json",  # relative: read from the file's folder
        "identity": "site0.identity",
        "run": dict(_RUN),
    }


def test_valid_configs_load_with_paths_resolved(certs, tmp_path):
    server = load_server_config(_write(tmp_path / "s.toml", _toml(_server_values(certs, tmp_path))))
    assert server.superlink.supernode_keys == tuple(p for _, p in certs.supernode_keys.values())
    assert server.run.transport == "flower" and server.run.sites == 2
    assert server.run_config_entries()["train-timeout"] == 120.0  # Deadlines' default
    site = load_site_config(_write(tmp_path / "site.toml", _toml(_site_values(certs, tmp_path))))
    assert site.roster == tmp_path / "roster.json" and site.data is None
    assert site.logs == tmp_path / "site0-logs"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda v: v.update(colour="blue"), r"s\.toml: colour: unknown key"),
        (lambda v: v.pop("roster"), r"roster: missing"),
        (lambda v: v["superlink"].update(cert="nope.pem"), r"\] cert: .*nope\.pem does not"),
        (lambda v: v["superlink"].update(address="10.0.0.1"), r"\] address: write host:port"),
        (lambda v: v["superlink"].update(attach="yes"), r"attach: expected true or false"),
        (lambda v: v["superlink"].update(supernode_keys=["roster.json"]), r"keys: .*not a Super"),
        (lambda v: v["run"].update(rounds="two"), r"\] rounds: expected an integer"),
        (lambda v: v["run"].update(quant_bitz=8), r"\[run\] quant_bitz: unknown key"),
        (lambda v: v["run"].pop("max_weight"), r"\[run\] max_weight: missing"),
        (lambda v: v["run"].update(sites=0), r"\[run\]: --sites.*at least 1"),
        (lambda v: v.update(run_config="run.json"), r"either as a \[run\] table or as run_config"),
        (lambda v: v.update(deadlines={"train": -1}), r"\[deadlines\]: deadline 'train'"),
        (lambda v: v.update(deadlines={"warmup": 1}), r"\[deadlines\] warmup: unknown key"),
    ],
)  # fmt: skip
def test_a_bad_server_config_names_the_file_and_the_key(certs, tmp_path, change, message):
    values = _server_values(certs, tmp_path)
    change(values)
    with pytest.raises(ConfigError, match=message):
        load_server_config(_write(tmp_path / "s.toml", _toml(values)))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda v: v.update(data_dir="x"), r"site\.toml: data_dir: unknown key"),
        (lambda v: v.pop("auth_key"), r"auth_key: missing"),
        (lambda v: v.update(ca_cert="missing.crt"), r"ca_cert: .*missing\.crt does not exist"),
        (lambda v: v.update(site=-1), r"site: a site id is at least 0"),
        (lambda v: v.update(site=2), r"site: site 2 is not below the run's 2 sites"),
        (lambda v: v.update(site="0"), r"site: expected an integer"),
        (lambda v: v.update(data="elsewhere/spec.yaml"), r"data: .*spec\.yaml does not exist"),
        (lambda v: v.update(connect_timeout=0), r"connect_timeout: give a positive"),
        (lambda v: v.update(data="roster.json"), r"data: .*own data, but .*dataset 'synthetic'"),
        (lambda v: v["run"].update(site_data=["a.yaml"]), r"site_data: no site's data paths"),
    ],
)
def test_a_bad_site_config_names_the_file_and_the_key(certs, tmp_path, change, message):
    values = _site_values(certs, tmp_path)
    change(values)
    with pytest.raises(ConfigError, match=message):
        load_site_config(_write(tmp_path / "site.toml", _toml(values)))


def test_a_config_that_is_not_toml_or_absent_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_site_config(_write(tmp_path / "bad.toml", "site = \n"))
    with pytest.raises(ConfigError, match=r"absent\.toml: no such file"):
        load_server_config(tmp_path / "absent.toml")


def test_dev_certificates_load_and_flower_accepts_them(certs):
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises unless the CA signed it
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "fed.example.org" in names.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1"}
    key = serialization.load_pem_private_key(certs.server_key.read_bytes(), None)
    assert key.public_key() == server.public_key()
    assert oct(certs.server_key.stat().st_mode & 0o777) == "0o600"
    for private, public in certs.supernode_keys.values():
        secret = serialization.load_ssh_private_key(private.read_bytes(), None)  # as Flower
        assert isinstance(secret, ec.EllipticCurvePrivateKey)
        assert try_load_public_key(public) == public_key_to_bytes(secret.public_key())
        assert oct(private.stat().st_mode & 0o777) == "0o600"


def test_dev_certificates_never_overwrite(tmp_path):
    assert main(["deploy", "certs", "--out", str(tmp_path), "--server-address", "10.0.0.1"]) == 0
    assert main(["deploy", "certs", "--out", str(tmp_path), "--server-address", "10.0.0.1"]) == 2
    with pytest.raises(ConfigError, match="give an IP address or a DNS name"):
        write_dev_certificates(tmp_path / "other", addresses=["10.0.0.1:9093"], sites=0)


def _command(args: list[str], log: Path) -> subprocess.Popen:
    """``fedshield ARGS`` in its own process group, as a host would start it."""
    return subprocess.Popen(
        [sys.executable, "-m", "fedshield.cli", *args],
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def _deployment_files(tmp_path: Path, sites: int) -> tuple[RunConfig, Path, list[Path], Path]:
    """Certificates, enrolment, run.json, server.toml and one site.toml per site (plus one
    for an intruder: site 0's identity behind an unregistered SuperNode key)."""
    certs = write_dev_certificates(tmp_path / "certs", addresses=["127.0.0.1"], sites=sites + 1)
    config = with_data_facts(
        RunConfig(protect="secagg", sites=sites, rounds=1, local_epochs=1, transport="flower")
    )
    roster = enrol_sites(config, tmp_path / "enrolment")
    _write(tmp_path / "run.json", json.dumps(config.as_dict()))
    address = f"127.0.0.1:{free_port()}"
    server = _write(tmp_path / "server.toml", _toml({
        "roster": str(roster), "out": "out", "run_config": "run.json",
        "superlink": {"address": address, "ca_cert": str(certs.ca_cert),
                      "cert": str(certs.server_cert), "key": str(certs.server_key),
                      "supernode_keys": [str(certs.supernode_keys[s][1]) for s in range(sites)]},
        "deadlines": {"join": 120, "stage": 30},
    }))  # fmt: skip
    site_tomls = []
    for site in range(sites + 1):
        identity = tmp_path / "enrolment" / f"site{site % sites}.identity"
        site_tomls.append(_write(tmp_path / f"site{site}.toml", _toml({
            "site": site % sites, "superlink": address,
            "ca_cert": str(certs.ca_cert), "auth_key": str(certs.supernode_keys[site][0]),
            "roster": str(roster), "identity": str(identity), "run_config": "run.json",
            "logs": f"logs{site}", "connect_timeout": 20.0,
        })))  # fmt: skip
    return config, server, site_tomls, tmp_path / "out"


@pytest.mark.flower
def test_two_commands_over_tls_with_supernode_auth_unmask_the_in_process_aggregate(tmp_path):
    """``fedshield server`` starts a TLS SuperLink with SuperNode authentication and
    registers two sites' keys; each ``fedshield site`` joins with its own key; a third
    SuperNode, whose key was never registered, is refused; the round's secagg aggregate is
    the in-process engine's, bit for bit, and every process is gone afterwards."""
    config, server_toml, site_tomls, out = _deployment_files(tmp_path, sites=2)
    *sites, intruder = site_tomls
    started = [_command(["site", "--config", str(p)], tmp_path / f"{p.stem}.out") for p in sites]
    started.append(_command(["site", "--config", str(intruder)], tmp_path / "intruder.out"))
    server = _command(["server", "--config", str(server_toml)], tmp_path / "server.out")
    started.append(server)
    seen = set()
    try:
        deadline = time.monotonic() + 400
        while server.poll() is None and time.monotonic() < deadline:
            seen |= _descendants({p.pid for p in started})  # Flower's children included
            time.sleep(0.5)
        assert server.wait(timeout=1) == 0, (tmp_path / "server.out").read_text()[-3000:]
        for process in started[:2]:  # the run's end ends each site
            assert process.wait(timeout=60) == 0
        assert started[2].wait(timeout=60) == 2  # the refused SuperNode: an error, exit 2
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    assert "SuperNode exited" in (tmp_path / "intruder.out").read_text()
    result = json.loads((out / "result.json").read_text())
    assert (out / "report.md").is_file()
    assert result["config"]["max_weight"] == config.max_weight
    local = in_process(RunConfig(**result["config"]))
    for remote, mine in zip(result["rounds"], local, strict=True):
        assert remote["clients"] == [0, 1] and remote["dropped"] == []
        digest = remote["protocol"]["aggregate_sha256"]
        assert digest is not None and digest == mine["protocol"]["aggregate_sha256"]
        assert remote["model_sha256"] == mine["model_sha256"]
    assert len(seen) > 8  # superlink, supernodes, site processes, flwr run, Flower's children
    assert _alive(seen) == set()


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live (not zombie) process (Linux ``/proc``)."""
    parents = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if entry.isdigit() and fields[0] != "Z":
            parents[int(entry)] = int(fields[1])
    return parents


def _descendants(roots: set[int]) -> set[int]:
    parents, found = _parents(), set(roots)
    while True:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        if not more:
            return found
        found |= more


def _alive(pids: set[int]) -> set[int]:
    deadline = time.monotonic() + 15  # SIGKILL is delivered asynchronously
    while (alive := pids & set(_parents())) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive
