"""The local link between a SuperNode's ClientApp and its site process.

Bytes only (never pickle), over loopback TCP, one request per connection, every message
authenticated with the site's key. The site process opens each connection with a fresh
32-byte nonce. The caller sends a header, the body's length (8 bytes) and
``HMAC-SHA256(key, "length" | nonce | length)``, then the body (``kind``, a NUL byte, the
payload) and ``HMAC-SHA256(key, "request" | nonce | body)``. The reply is its length, the
body (``+`` and the payload, or ``-`` and an error message) and
``HMAC-SHA256(key, "reply" | nonce | body)``. A request without the key, altered, or replayed
on another connection is dropped unanswered, and the site reads (or allocates) no body
before the header's MAC holds.

Each connection is read in its own thread, within one deadline for the whole request
(``timeout``, extended by the body's size at ``MIN_RATE`` once its header authenticates, and
the reply's send likewise by its size, so a large model is not cut off on a loaded host while
a caller without the key gets no more than ``timeout``; the caller builds its request before
it connects, since its header is due within ``timeout``), and only authenticated requests
reach the site's handler, one at a time: a
silent, slow or broken caller costs nothing but its own thread for at most ``timeout``, never
delays another request, and no error of one connection ends the process.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["MIN_RATE", "REQUEST_TIMEOUT", "RelayError", "ask", "serve", "write_key"]

REQUEST_TIMEOUT = 10.0  # seconds a caller has to deliver its header (and a small body)
MIN_RATE = 8 << 20  # bytes/s: an authenticated body's deadline grows by its size at this rate
CONNECT_TIMEOUT = 10.0
MAX_REQUEST = 1 << 30  # bytes: a header announcing more ends its connection
_MAC_BYTES = 32
_LENGTH = struct.Struct("<Q")


class RelayError(RuntimeError):
    """The site process answered with an error (its message), or not authentically."""


def write_key(path: Path) -> bytes:
    """Create a fresh 32-byte key file readable by its owner only (``O_CREAT | O_EXCL``,
    mode 0600: never an existing file, never readable by others in between)."""
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(key)
    return key


def ask(
    address: tuple[str, int], authkey: bytes, kind: str, payload: bytes,
    *, timeout: float | None = None,
) -> bytes:  # fmt: skip
    """Send one request to the site process and return its reply payload (``timeout``: for
    the whole exchange, which may include a local training; ``None`` waits)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    body = kind.encode() + b"\0" + payload  # before connecting: the header is due at once
    length = _LENGTH.pack(len(body))
    connect_s = CONNECT_TIMEOUT if timeout is None else min(CONNECT_TIMEOUT, timeout)
    with socket.create_connection(address, timeout=connect_s) as sock:
        try:
            nonce = _recv_exactly(sock, 32, deadline)
            # within the deadline too: a site process that stops reading (hung) fills the
            # socket's buffers, and a send without a timeout would then wait forever
            sock.settimeout(None if deadline is None else _left(deadline))
            sock.sendall(length + _mac(authkey, b"length", nonce, length))
            sock.sendall(body)
            sock.sendall(_mac(authkey, b"request", nonce, body))
            (size,) = _LENGTH.unpack(_recv_exactly(sock, _LENGTH.size, deadline))
            reply = _recv_exactly(sock, size + _MAC_BYTES, deadline)
        except (EOFError, ConnectionError):
            raise RelayError(
                "the site process closed the connection unanswered (is this its key file?)"
            ) from None
    body, mac = reply[:-_MAC_BYTES], reply[-_MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(authkey, b"reply", nonce, body)):
        raise RelayError("the site's reply is not authenticated by its key")
    if body[:1] == b"+":
        return body[1:]
    raise RelayError(body[1:].decode(errors="replace"))


def serve(
    address: tuple[str, int], authkey: bytes, handle: Callable[[str, bytes], bytes | None],
    *, timeout: float = REQUEST_TIMEOUT, stop: threading.Event | None = None,
) -> None:  # fmt: skip
    """Answer requests with ``handle(kind, payload) -> bytes`` until it returns ``None``, or
    until ``stop`` is set (from a signal handler, say): the listening socket is then closed
    within 0.2 s and no further request reaches ``handle``."""
    stop = stop if stop is not None else threading.Event()
    one_at_a_time = threading.Lock()

    def connection(sock: socket.socket) -> None:
        # a silent, slow, broken or unauthenticated caller: its thread just ends
        with sock, contextlib.suppress(EOFError, OSError):
            _answer(sock, authkey, handle, one_at_a_time, stop, timeout)

    with socket.create_server(address) as server:
        server.settimeout(0.2)  # to notice the stop between callers
        while not stop.is_set():
            try:
                sock, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=connection, args=(sock,), daemon=True).start()


def _answer(sock, authkey, handle, lock: threading.Lock, stop: threading.Event, timeout):
    """Read, authenticate and answer one request on ``sock`` (the handler under ``lock``)."""
    deadline = time.monotonic() + timeout
    nonce = secrets.token_bytes(32)
    sock.settimeout(timeout)
    sock.sendall(nonce)
    header = _recv_exactly(sock, _LENGTH.size + _MAC_BYTES, deadline)
    length, mac = header[: _LENGTH.size], header[_LENGTH.size :]
    if not hmac.compare_digest(mac, _mac(authkey, b"length", nonce, length)):
        return  # not from a holder of the key: no body is read
    (size,) = _LENGTH.unpack(length)
    if size > MAX_REQUEST:
        return
    request = _recv_exactly(sock, size + _MAC_BYTES, deadline + size / MIN_RATE)
    body, mac = request[:-_MAC_BYTES], request[-_MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(authkey, b"request", nonce, body)):
        return  # altered, or replayed from another connection
    kind, _, payload = body.partition(b"\0")
    with lock:
        if stop.is_set():
            return
        try:
            reply = handle(kind.decode(), payload)
            answer = b"+" + (reply or b"")
        except Exception as exc:  # the site's error travels back as text
            reply, answer = b"", b"-" + f"{type(exc).__name__}: {exc}".encode()
        if reply is None:
            stop.set()
    sock.settimeout(timeout + len(answer) / MIN_RATE)  # a whole sendall: grows with the reply
    sock.sendall(_LENGTH.pack(len(answer)) + answer + _mac(authkey, b"reply", nonce, answer))


def _recv_exactly(sock: socket.socket, size: int, deadline: float | None) -> bytes:
    """``size`` bytes from ``sock`` before ``deadline`` (``time.monotonic``; ``None``: no
    deadline); ``EOFError`` when the peer closes first, ``TimeoutError`` past the deadline."""
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the peer did not deliver in time")
            sock.settimeout(left)
        else:
            sock.settimeout(None)
        n = sock.recv_into(view[got:], min(size - got, 1 << 20))
        if n == 0:
            raise EOFError("the peer closed the connection")
        got += n
    return bytes(buffer)


def _left(deadline: float) -> float:
    """Seconds left before ``deadline`` (``time.monotonic``); ``TimeoutError`` when none."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the peer did not answer in time")
    return left


def _mac(key: bytes, label: bytes, nonce: bytes, body: bytes) -> bytes:
    return hmac.new(key, label + nonce + body, hashlib.sha256).digest()
