"""The relay between a SuperNode's ClientApp and its site process, as an attacker on the same
host would try it: silent and broken connections, callers without the key, altered and
replayed requests. The site process keeps serving, and a real request is never delayed by
more than the timeout."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import socket
import stat
import struct
import threading
import time

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
    thread.join(5)  # serving ends once a request says so
    assert not thread.is_alive()


def test_a_request_and_an_error_travel_authenticated(relay):
    assert ask(relay, KEY, "train", b"abc") == b"train:abc"
    with pytest.raises(RelayError, match="ValueError: the site refused"):
        ask(relay, KEY, "fail", b"")


def test_silent_and_trickling_callers_never_delay_a_real_request(relay):
    """Twenty silent connections and one that trickles a byte every 0.1 s (each read within
    the per-read deadline of old): a real request is answered at once, and the trickler is
    cut off by the whole-request deadline (0.3 s here)."""
    silent = [socket.create_connection(relay) for _ in range(20)]
    trickler = socket.create_connection(relay)
    trickler.recv(32)
    start = time.perf_counter()
    assert ask(relay, KEY, "hello", b"") == b"hello:"
    assert time.perf_counter() - start < 1.0
    with pytest.raises(OSError):
        for _ in range(40):  # 4 s of trickling: the site closes the connection long before
            trickler.sendall(b"x")
            time.sleep(0.1)
    for sock in [*silent, trickler]:
        sock.close()


def test_a_caller_without_the_key_gets_nothing_and_the_site_keeps_serving(relay):
    with pytest.raises(RelayError, match="unanswered"):
        ask(relay, b"x" * 32, "train", b"abc")
    assert ask(relay, KEY, "train", b"ok") == b"train:ok"


def _request(nonce: bytes, body: bytes, key: bytes = KEY) -> bytes:
    length = struct.pack("<Q", len(body))
    mac = hmac.new(key, b"length" + nonce + length, hashlib.sha256).digest()
    return length + mac + body + hmac.new(key, b"request" + nonce + body, hashlib.sha256).digest()


def _send_raw(relay, make) -> bytes:
    """Send ``make(nonce)`` on a fresh connection; what comes back before it closes."""
    with socket.create_connection(relay) as sock:
        nonce = sock.recv(32)
        sock.sendall(make(nonce))
        sock.settimeout(2)
        chunks = []
        with contextlib.suppress(ConnectionResetError):  # closed with our bytes unread
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
        return b"".join(chunks)


def test_an_altered_or_replayed_request_is_dropped(relay):
    captured = {}

    def honest(nonce):
        captured["request"] = _request(nonce, b"train\0abc")
        return captured["request"]

    assert _send_raw(relay, honest)  # the honest request is answered
    assert _send_raw(relay, lambda nonce: captured["request"]) == b""  # replayed: no
    assert _send_raw(relay, lambda nonce: _request(nonce, b"train\0abc")[:-1] + b"x") == b""
    assert _send_raw(relay, lambda nonce: _request(nonce, b"x", key=b"y" * 32)) == b""
    assert ask(relay, KEY, "train", b"still") == b"train:still"


def test_a_connection_dropped_mid_request_leaves_the_site_serving(relay):
    with socket.create_connection(relay) as sock:
        nonce = sock.recv(32)
        sock.sendall(_request(nonce, b"train\0" + b"p" * 4096)[:200])  # then hangs up
    assert ask(relay, KEY, "train", b"after") == b"train:after"


def test_a_large_payload_goes_through(relay):
    """50 MiB on a 0.3 s timeout: an authenticated body gets time in proportion to its size
    (it was cut off on a loaded CI host before)."""
    payload = bytes(range(256)) * (50 * 4096)  # 50 MiB
    assert ask(relay, KEY, "big", payload) == b"big:" + payload


def test_key_files_are_new_and_owner_only(tmp_path):
    path = tmp_path / "site0.key"
    key = write_key(path)
    assert path.read_bytes() == key and len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        write_key(path)  # never overwrite (or follow) an existing file


def test_a_hung_site_process_holds_its_caller_no_longer_than_the_deadline():
    """A site process stopped with SIGSTOP: the kernel still accepts the connection, but no
    nonce comes and nothing is read; the caller (the ClientApp) gives up at its deadline,
    also while sending a body too large for the socket's buffers."""
    with socket.create_server(("127.0.0.1", 0)) as hung:  # listens, never accepts nor reads
        for payload in (b"small", b"x" * (64 << 20)):
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                ask(hung.getsockname(), KEY, "train", payload, timeout=0.5)
            assert time.monotonic() - start < 1.5


def test_a_site_that_sends_the_nonce_then_hangs_holds_its_caller_no_longer(relay):
    """The caller's send is bounded too: a peer that stops reading after the nonce."""
    with socket.create_server(("127.0.0.1", 0)) as stuck:

        def nonce_then_nothing():
            conn, _ = stuck.accept()
            conn.sendall(b"n" * 32)
            time.sleep(3)  # reads nothing: a 64 MiB body fills the buffers
            conn.close()

        threading.Thread(target=nonce_then_nothing, daemon=True).start()
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            ask(stuck.getsockname(), KEY, "train", b"x" * (64 << 20), timeout=0.5)
        assert time.monotonic() - start < 1.5
    assert ask(relay, KEY, "train", b"still") == b"train:still"  # others unaffected
