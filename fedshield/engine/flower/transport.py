"""One protocol stage = one push of requests through a Flower grid, then pulls of the replies
until every addressed site has answered or the phase's deadline has passed.

Flower's ``Grid.send_and_receive`` polls every 3 s and measures its timeout from after the
push; here the deadline runs from the phase's start and the replies are polled at a growing
interval (50 ms to 0.5 s). A reply is matched to its request by ``reply_to_message_id``, never
by its sender: only replies to this phase's own message ids are pulled (the SuperLink keys them
by those ids), so a late answer to an earlier phase cannot pass for one to this phase. Each
request carries a Flower TTL a little past the deadline (the SuperLink then drops the request
for a site that never fetched it, and refuses a reply to it), and its deadline in seconds, so
that the site's ClientApp stops waiting for its site process then too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from flwr.app import ConfigRecord, Message, RecordDict

from fedshield.engine.transport import Reply, Transport
from fedshield.errors import ConfigError

__all__ = ["FlowerTransport", "relay_message", "reply_payload"]

MESSAGE_TYPE = "query.relay"
TTL_GRACE = 10.0  # seconds a request outlives its deadline: the last pull finds it still there
_FIRST_POLL, _MAX_POLL = 0.05, 0.5  # seconds between pulls of the replies


def relay_message(node_id: int, kind: str, data: bytes, *, timeout: float) -> Message:
    """A Flower message carrying one fedshield request (our bytes in a ConfigRecord), due
    within ``timeout`` seconds."""
    content = RecordDict(
        {"fedshield": ConfigRecord({"kind": kind, "data": data, "timeout": float(timeout)})}
    )
    return Message(content, dst_node_id=node_id, message_type=MESSAGE_TYPE, ttl=timeout + TTL_GRACE)


def reply_payload(message: Message) -> tuple[bytes | None, str | None]:
    """``(data, None)`` from a good reply, ``(None, error)`` otherwise."""
    if message.has_error():
        return None, f"flower: {message.error.reason}"
    record = message.content["fedshield"]
    if not record["ok"]:
        return None, str(record["error"])
    return bytes(record["data"]), None


class FlowerTransport(Transport):
    """Sends each addressed site its message through the grid; a site that does not answer
    within ``timeout`` seconds of the phase's start (a dead or hung site) gets no reply: a
    dropout.

    ``nodes`` maps fedshield client ids to Flower node ids; ``on_stage`` is told each stage as
    it opens (progress, fault injection in tests).
    """

    def __init__(
        self,
        grid,
        nodes: Mapping[int, int],
        *,
        timeout: float,
        on_stage: Callable[[str], None] | None = None,
        prefix: str = "stage",
    ) -> None:
        if not timeout > 0:
            raise ConfigError(f"a Flower phase's timeout must be positive seconds, not {timeout!r}")
        self.grid = grid
        self.nodes = dict(nodes)
        self.timeout = float(timeout)
        self.on_stage = on_stage
        self.prefix = prefix  # "keystage" for he's key distribution

    def exchange(self, stage: str, messages: Mapping[int, bytes]) -> dict[int, Reply]:
        if self.on_stage:
            self.on_stage(stage)
        return self.request(f"{self.prefix}:{stage}", messages)

    def request(self, kind: str, messages: Mapping[int, bytes]) -> dict[int, Reply]:
        """Any request (``train``, ``evaluate``, a stage) to the addressed sites; the replies
        that arrived within ``timeout`` of the call."""
        if not messages:  # a stage addressed to nobody (secagg's expel, most rounds)
            return {}
        start = time.monotonic()
        deadline = start + self.timeout
        sites = [c for c in messages if c in self.nodes]
        outgoing = [
            relay_message(self.nodes[c], kind, bytes(messages[c]), timeout=self.timeout)
            for c in sites
        ]
        ids = list(self.grid.push_messages(outgoing))
        pending = {mid: cid for mid, cid in zip(ids, sites, strict=True) if mid}
        replies = self._collect(pending, start, deadline)
        for cid in messages:
            replies.setdefault(
                cid, Reply(None, error=f"no reply within the {self.timeout:g} s deadline")
            )
        return replies

    def _collect(self, pending: dict[str, int], start: float, deadline: float) -> dict[int, Reply]:
        """Pull the replies to ``pending`` (message id → client id) until all are in or
        ``deadline`` (``time.monotonic``) has passed; anything else pulled is discarded."""
        replies: dict[int, Reply] = {}
        interval = _FIRST_POLL
        while pending:
            for message in self.grid.pull_messages(list(pending)):
                cid = pending.pop(message.metadata.reply_to_message_id, None)
                if cid is None:
                    continue  # not a reply to this phase's requests (or a second one)
                data, error = reply_payload(message)
                replies[cid] = Reply(data, time.monotonic() - start, error)
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                break
            time.sleep(min(interval, left))
            interval = min(2 * interval, _MAX_POLL)
        return replies
