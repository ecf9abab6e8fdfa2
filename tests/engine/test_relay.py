"""The relay between a SuperNode's ClientApp and its site process, as an attacker on the same
host would try it: silent and broken connections, callers without the key, altered and
replayed requests. The site process keeps serving, and a real request is never delayed by
more than the timeout."""

from __future__ import annotations

import socket
import stat
import threading
import time
from multiprocessing.connection import Connection

import pytest

from fedshield.engine.flower.relay import RelayError, ask, serve, write_key

KEY = b"k" * 32


def _handler(kind: str, payload: bytes) -> bytes | None:
    if kind == "stop":
        return None
    if kind == "fail":
        raise ValueError("the site refused")
    return kind.encode() + b":" + payload


@pytest.fixture
def relay():
    """A site process's relay in a thread, with a short timeout; its address."""
    server = socket.create_server(("127.0.0.1", 0))
    address = server.getsockname()
    server.close()
    thread = threading.Thread(
        target=serve, args=(address, KEY, _handler), kwargs={"timeout": 0.3}, daemon=True
    )
    thread.start()
    for _ in range(100):
        try:
            socket.create_connection(address, timeout=1).close()
            break
        except OSError:
            time.sleep(0.02)
    yield address
    ask(address, KEY, "stop", b"")
    thread.join(5)
    assert not thread.is_alive()


def test_a_request_and_an_error_travel_authenticated(relay):
    assert ask(relay, KEY, "train", b"abc") == b"train:abc"
    with pytest.raises(RelayError, match="ValueError: the site refused"):
        ask(relay, KEY, "fail", b"")


def test_a_silent_connection_delays_a_real_request_by_at_most_the_timeout(relay):
    silent = socket.create_connection(relay)  # connects, then says nothing
    start = time.perf_counter()
    assert ask(relay, KEY, "hello", b"") == b"hello:"
    assert time.perf_counter() - start < 2.0  # the timeout is 0.3 s
    silent.close()


def test_a_caller_without_the_key_gets_nothing_and_the_site_keeps_serving(relay):
    with pytest.raises(RelayError, match="unanswered"):
        ask(relay, b"x" * 32, "train", b"abc")
    assert ask(relay, KEY, "train", b"ok") == b"train:ok"


def test_an_altered_or_replayed_request_is_dropped(relay):
    captured = {}

    def send(alter) -> bytes | None:
        with Connection(socket.create_connection(relay).detach()) as conn:
            nonce = conn.recv_bytes()
            if "request" not in captured:  # honest first: keep its bytes
                import hashlib
                import hmac

                body = b"train\0abc"
                mac = hmac.new(KEY, b"request" + nonce + body, hashlib.sha256).digest()
                captured["request"] = mac + body
            conn.send_bytes(alter(captured["request"]))
            try:
                return conn.recv_bytes()
            except (EOFError, OSError):
                return None

    assert send(lambda r: r) is not None  # the honest request is answered
    assert send(lambda r: r) is None  # the same bytes replayed on a new connection: no
    assert send(lambda r: r[:-1] + b"x") is None  # altered: no
    assert ask(relay, KEY, "train", b"still") == b"train:still"


def test_a_connection_dropped_mid_request_leaves_the_site_serving(relay):
    with Connection(socket.create_connection(relay).detach()) as conn:
        conn.recv_bytes()
        conn._send(b"\x00\x00\x10\x00partial")  # announces 4096 bytes, sends 7, hangs up
    assert ask(relay, KEY, "train", b"after") == b"train:after"


def test_key_files_are_new_and_owner_only(tmp_path):
    path = tmp_path / "site0.key"
    key = write_key(path)
    assert path.read_bytes() == key and len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        write_key(path)  # never overwrite (or follow) an existing file
