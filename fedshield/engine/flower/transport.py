"""One protocol stage = one send-and-receive through a Flower grid."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from flwr.app import ConfigRecord, Message, RecordDict

from fedshield.engine.transport import Reply, Transport

__all__ = ["FlowerTransport", "relay_message", "reply_payload"]

MESSAGE_TYPE = "query.relay"


def relay_message(node_id: int, kind: str, data: bytes) -> Message:
    """A Flower message carrying one fedshield request (our bytes in a ConfigRecord)."""
    content = RecordDict({"fedshield": ConfigRecord({"kind": kind, "data": data})})
    return Message(content, dst_node_id=node_id, message_type=MESSAGE_TYPE)


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
    within ``timeout`` seconds (a dead SuperNode, say) gets no reply: a dropout.

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
        self.grid = grid
        self.nodes = dict(nodes)
        self.timeout = timeout
        self.on_stage = on_stage
        self.prefix = prefix  # "keystage" for he's key distribution

    def exchange(self, stage: str, messages: Mapping[int, bytes]) -> dict[int, Reply]:
        if self.on_stage:
            self.on_stage(stage)
        return self.request(f"{self.prefix}:{stage}", messages)

    def request(self, kind: str, messages: Mapping[int, bytes]) -> dict[int, Reply]:
        """Any request (``train``, ``evaluate``, a stage) to the addressed sites."""
        if not messages:  # a stage addressed to nobody (secagg's expel, most rounds)
            return {}
        site_of = {self.nodes[c]: c for c in messages if c in self.nodes}
        outgoing = [relay_message(node, kind, bytes(messages[c])) for node, c in site_of.items()]
        start = time.perf_counter()
        replies = {}
        for message in self.grid.send_and_receive(outgoing, timeout=self.timeout):
            cid = site_of.get(message.metadata.src_node_id)
            if cid is None:
                continue
            data, error = reply_payload(message)
            replies[cid] = Reply(data, time.perf_counter() - start, error)
        for cid in messages:
            replies.setdefault(cid, Reply(None, error="no reply within the stage timeout"))
        return replies
