"""A Flower site process's lifetime: SIGTERM (what a supervisor or ``LocalDeployment.stop``
sends) stops it serving cleanly, with exit status 0 and its port closed."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from fedshield.engine.experiment import RunConfig, enrol_sites, with_data_facts
from fedshield.engine.flower.relay import ask, serve, write_key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_serve_returns_when_its_stop_event_is_set():
    port, stop = _free_port(), threading.Event()
    thread = threading.Thread(
        target=serve, args=(("127.0.0.1", port), b"k" * 32, lambda k, p: p), daemon=True,
        kwargs={"stop": stop},
    )  # fmt: skip
    thread.start()
    deadline = time.monotonic() + 10
    while not _listening(port):
        assert time.monotonic() < deadline, "the relay did not listen"
        time.sleep(0.02)
    assert ask(("127.0.0.1", port), b"k" * 32, "echo", b"hi", timeout=10) == b"hi"
    stop.set()
    thread.join(timeout=2)
    assert not thread.is_alive()
    assert not _listening(port)  # the listening socket is closed


@pytest.fixture
def site_files(tmp_path):
    """A run config, a roster, site 0's identity and a relay key, as a deployment has them."""
    config = with_data_facts(RunConfig(protect="plain", sites=2, rounds=1))
    (tmp_path / "run.json").write_text(json.dumps(config.as_dict()))
    enrol_sites(config, tmp_path)
    write_key(tmp_path / "site0.key")
    return tmp_path


def test_sigterm_stops_the_site_process_with_status_0(site_files):
    port = _free_port()
    args = ["--config", "run.json", "--site", "0", "--port", str(port), "--key-file",
            "site0.key", "--roster", "roster.json", "--identity", "site0.identity"]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "fedshield.engine.flower.site", *args],
        cwd=site_files, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180  # it imports torch and builds its data first
        while not _listening(port):
            assert process.poll() is None, process.communicate()[0].decode()
            assert time.monotonic() < deadline, "the site process did not listen"
            time.sleep(0.1)
        key = (site_files / "site0.key").read_bytes()
        hello = json.loads(ask(("127.0.0.1", port), key, "hello", b"", timeout=30))
        assert hello["id"] == 0
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output.decode()
    assert b"Traceback" not in output
    assert not _listening(port)
