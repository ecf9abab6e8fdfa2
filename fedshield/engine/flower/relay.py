"""The local link between a SuperNode's ClientApp and its site process.

Bytes only (``send_bytes`` / ``recv_bytes`` of :mod:`multiprocessing.connection`, never
pickle), over loopback TCP, with the connection authenticated by a per-site key (HMAC
challenge). A request is ``kind``, a NUL byte, then the payload; a reply starts with ``+``
(success, then the payload) or ``-`` (an error message).
"""

from __future__ import annotations

from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Listener

__all__ = ["RelayError", "ask", "serve"]


class RelayError(RuntimeError):
    """The site process answered with an error (its message)."""


def ask(address: tuple[str, int], authkey: bytes, kind: str, payload: bytes) -> bytes:
    """Send one request to the site process and return its reply payload."""
    with Client(address, authkey=authkey) as conn:
        conn.send_bytes(kind.encode() + b"\0" + payload)
        reply = conn.recv_bytes()
    if reply[:1] == b"+":
        return reply[1:]
    raise RelayError(reply[1:].decode(errors="replace"))


def serve(address: tuple[str, int], authkey: bytes, handle) -> None:
    """Answer requests with ``handle(kind, payload) -> bytes`` until it returns ``None``."""
    with Listener(address, authkey=authkey) as listener:
        while True:
            try:
                conn = listener.accept()  # authenticates the caller (HMAC challenge)
            except (AuthenticationError, EOFError, OSError):
                continue  # a port probe or a caller without the key: next
            with conn:
                request = conn.recv_bytes()
                kind, _, payload = request.partition(b"\0")
                try:
                    reply = handle(kind.decode(), payload)
                except Exception as exc:  # the site's error travels back as text
                    conn.send_bytes(b"-" + f"{type(exc).__name__}: {exc}".encode())
                    continue
                if reply is None:
                    conn.send_bytes(b"+")
                    return
                conn.send_bytes(b"+" + reply)
