"""The local link between a SuperNode's ClientApp and its site process.

Bytes only (length-prefixed frames of :mod:`multiprocessing.connection`, never pickle), over
loopback TCP, one request per connection. Every message is authenticated with the site's key:
the site process opens each connection with a fresh 32-byte nonce; the request is
``HMAC-SHA256(key, "request" | nonce | body)`` then the body (``kind``, a NUL byte, the
payload), and the reply ``HMAC-SHA256(key, "reply" | nonce | body)`` then the body (``+`` and
the payload, or ``-`` and an error message). A request without the key, altered, or replayed
on another connection is dropped unanswered.

The site process serves one connection at a time, and a caller that goes silent, or whose
connection fails, costs it at most ``timeout`` seconds (every read and write on an accepted
connection has that deadline): it never blocks the next request for longer, and no error of
one connection ends the process.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import socket
import struct
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

__all__ = ["REQUEST_TIMEOUT", "RelayError", "ask", "serve", "write_key"]

REQUEST_TIMEOUT = 10.0  # seconds a caller has to send its request (and to read the reply)
CONNECT_TIMEOUT = 10.0
MAX_REQUEST = 1 << 30  # bytes: a frame claiming more ends its connection unread
_MAC_BYTES = 32


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
    the reply, which may take a whole local training; ``None`` waits)."""
    sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT)
    sock.settimeout(None)
    _deadline(sock, timeout)
    with Connection(sock.detach()) as conn:
        try:
            nonce = conn.recv_bytes(maxlength=64)
            body = kind.encode() + b"\0" + payload
            conn.send_bytes(_mac(authkey, b"request", nonce, body) + body)
            reply = conn.recv_bytes()
        except EOFError:
            raise RelayError(
                "the site process closed the connection unanswered (is this its key file?)"
            ) from None
    mac, body = reply[:_MAC_BYTES], reply[_MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(authkey, b"reply", nonce, body)):
        raise RelayError("the site's reply is not authenticated by its key")
    if body[:1] == b"+":
        return body[1:]
    raise RelayError(body[1:].decode(errors="replace"))


def serve(
    address: tuple[str, int], authkey: bytes, handle: Callable[[str, bytes], bytes | None],
    *, timeout: float = REQUEST_TIMEOUT,
) -> None:  # fmt: skip
    """Answer requests with ``handle(kind, payload) -> bytes`` until it returns ``None``."""
    with socket.create_server(address) as server:
        while True:
            sock, _ = server.accept()
            _deadline(sock, timeout)
            with Connection(sock.detach()) as conn:
                try:
                    if _answer(conn, authkey, handle):
                        return
                except (EOFError, OSError):
                    continue  # a silent, broken or unauthenticated caller: the next one


def _answer(conn: Connection, authkey: bytes, handle) -> bool:
    """One request on ``conn``; ``True`` when ``handle`` says to stop serving."""
    nonce = secrets.token_bytes(32)
    conn.send_bytes(nonce)
    request = conn.recv_bytes(maxlength=MAX_REQUEST)
    mac, body = request[:_MAC_BYTES], request[_MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(authkey, b"request", nonce, body)):
        return False  # not from a holder of the key (or replayed): no answer
    kind, _, payload = body.partition(b"\0")
    try:
        reply = handle(kind.decode(), payload)
        answer = b"+" + (reply or b"")
    except Exception as exc:  # the site's error travels back as text
        reply, answer = b"", b"-" + f"{type(exc).__name__}: {exc}".encode()
    conn.send_bytes(_mac(authkey, b"reply", nonce, answer) + answer)
    return reply is None


def _mac(key: bytes, label: bytes, nonce: bytes, body: bytes) -> bytes:
    return hmac.new(key, label + nonce + body, hashlib.sha256).digest()


def _deadline(sock: socket.socket, seconds: float | None) -> None:
    """Bound every blocking read and write on ``sock`` (``SO_RCVTIMEO``/``SO_SNDTIMEO``: the
    socket stays blocking, so the framing code above needs no change)."""
    if seconds is None:
        return
    whole = int(seconds)
    value = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
