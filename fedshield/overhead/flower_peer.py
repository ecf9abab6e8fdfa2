"""The peer of ``secagg``: Flower 1.42's own SecAgg+ (``SecAggPlusWorkflow`` +
``secaggplus_mod``), unmodified, in one process. Our minimal in-memory ``Grid`` delivers each
message straight to the destination node's ``ClientApp`` and counts the bytes of every message
and reply's arrays. Needs ``flwr`` 1.42 (``pip install fedshield[flower]``): import this module
only when Flower's side is wanted.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterable

import flwr.compat.common.recorddict_compat as compat
import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.server import ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp.grid import Grid
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["run_flower_secaggplus"]


class _Client(NumPyClient):
    def __init__(self, update: np.ndarray) -> None:
        self.update = update

    def fit(self, parameters, config):
        return [self.update], 1, {}


class _LocalGrid(Grid):
    """Delivers messages synchronously to in-process ClientApps; times and sizes the replies."""

    def __init__(
        self,
        apps: dict[int, ClientApp],
        contexts: dict[int, Context],
        drop: dict[str, set[int]] | None = None,
    ) -> None:
        self.apps, self.contexts = apps, contexts
        self.drop = drop or {}
        self.client_seconds: dict[int, float] = dict.fromkeys(apps, 0.0)
        self.slowest_per_exchange: list[float] = []  # the critical path's client part
        self.copy_seconds = 0.0  # the simulated transport's copies: neither side's work
        self.bytes_up: dict[int, int] = dict.fromkeys(apps, 0)
        self.bytes_down: dict[int, int] = dict.fromkeys(apps, 0)
        self.model_down: dict[int, int] = dict.fromkeys(apps, 0)  # its fit instructions' model
        self._run = None

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.apps)

    def push_messages(self, messages):
        raise NotImplementedError("this grid only supports send_and_receive")

    def pull_messages(self, message_ids):
        raise NotImplementedError("this grid only supports send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout=None):
        replies, slowest = [], 0.0
        for message in messages:
            node = message.metadata.dst_node_id
            stage = message.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE)
            if node in self.drop.get(str(stage), ()):
                continue  # the node is gone: no reply, as with a timeout
            self.bytes_down[node] += _content_bytes(message)
            self.model_down[node] += _model_bytes(message)
            start = time.perf_counter()
            delivered = copy.deepcopy(message)  # a real transport gives each node its own copy
            self.copy_seconds += time.perf_counter() - start
            start = time.perf_counter()
            reply = self.apps[node](delivered, self.contexts[node])
            seconds = time.perf_counter() - start
            self.client_seconds[node] += seconds
            slowest = max(slowest, seconds)
            self.bytes_up[node] += _content_bytes(reply)
            replies.append(reply)
        self.slowest_per_exchange.append(slowest)
        return replies


def _content_bytes(message: Message) -> int:
    """Bytes of the arrays and config values a message carries (what would cross the wire)."""
    if message.has_error():
        return 0
    total = 0
    content = message.content
    for record in content.array_records.values():
        total += sum(len(array.data) for array in record.values())
    for record in content.config_records.values():
        for value in record.values():
            values = value if isinstance(value, list) else [value]
            total += sum(len(v) if isinstance(v, bytes) else 8 for v in values)
    return total


def _model_bytes(message: Message) -> int:
    """Bytes of the model a message carries: the arrays of its fit instructions' parameters
    (``fitins.parameters``, sent with the key shares before the masked vectors)."""
    return sum(
        len(array.data)
        for name, record in message.content.array_records.items()
        if name.startswith("fitins.")
        for array in record.values()
    )


def _server_context(grid: _LocalGrid, node_ids: list[int], dim: int) -> LegacyContext:
    """The ServerApp's context for one FedAvg round over ``node_ids`` with a zero model."""
    manager = SimpleClientManager()
    for nid in node_ids:
        manager.register(GridClientProxy(nid, grid, run_id=1))
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=len(node_ids),
        min_available_clients=len(node_ids),
    )
    server_context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(
        context=server_context,
        config=ServerConfig(num_rounds=1),
        strategy=strategy,
        client_manager=manager,
    )
    params = ndarrays_to_parameters([np.zeros(dim, np.float32)])
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        params, keep_input=True
    )
    cfg = ConfigRecord()
    cfg[WorkflowKey.CURRENT_ROUND] = 1
    cfg[WorkflowKey.START_TIME] = time.perf_counter()
    context.state.config_records[MAIN_CONFIGS_RECORD] = cfg
    return context


def run_flower_secaggplus(
    updates: dict[int, np.ndarray],
    *,
    num_shares: int,
    threshold: int,
    clip: float,
    quant_bits: int,
    drop_before_masked_input: set[int] = frozenset(),
) -> dict:
    """One SecAgg+ round of Flower's own workflow over ``updates`` (client id -> flat float32
    update; ``num_shares``: the group size, the client included); returns the ``aggregate``
    (the mean), ``round_s``, ``server_s``, ``critical_s``, ``client_s`` (mean) and bytes up and
    down per client (down: every message, and ``model_bytes_down_per_client`` of them the
    model its fit instructions carry). Clients in ``drop_before_masked_input`` (our ids)
    vanish before sending masked vectors.
    """
    logging.getLogger("flwr").setLevel(logging.WARNING)
    # What Flower's runtime sets for a ServerApp process before it creates messages.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    node_ids = [c + 1 for c in updates]  # Flower reserves node id 0
    contexts = {
        nid: Context(run_id=1, node_id=nid, node_config={}, state=RecordDict(), run_config={})
        for nid in node_ids
    }
    by_node = dict(zip(node_ids, updates.values(), strict=True))

    def client_fn(context: Context):
        return _Client(by_node[context.node_id]).to_client()

    apps = {nid: ClientApp(client_fn=client_fn, mods=[secaggplus_mod]) for nid in node_ids}
    gone = {c + 1 for c in drop_before_masked_input}
    grid = _LocalGrid(apps, contexts, drop={"collect_masked_vectors": gone})
    dim = next(iter(updates.values())).size
    context = _server_context(grid, node_ids, dim)
    workflow = SecAggPlusWorkflow(
        num_shares=num_shares,
        reconstruction_threshold=threshold,
        clipping_range=clip,
        quantization_range=2**quant_bits - 1,
        modulus_range=2**32,
        max_weight=1.0,
    )
    start = time.perf_counter()
    workflow(grid, context)
    wall = time.perf_counter() - start
    result = compat.arrayrecord_to_parameters(
        context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True
    )
    (aggregate,) = parameters_to_ndarrays(result)
    return {"aggregate": aggregate, "round_s": wall, **_costs(grid, wall)}


def _costs(grid: _LocalGrid, wall: float) -> dict:
    """A round's seconds and bytes per client from what ``grid`` timed and counted."""
    server_s = wall - sum(grid.client_seconds.values()) - grid.copy_seconds
    return {
        "server_s": server_s,
        # as deployed: each exchange waits for its slowest node, plus the server's own work
        "critical_s": server_s + sum(grid.slowest_per_exchange),
        "client_s": float(np.mean(list(grid.client_seconds.values()))),
        "bytes_up_per_client": float(np.mean(list(grid.bytes_up.values()))),
        "bytes_down_per_client": float(np.mean(list(grid.bytes_down.values()))),
        "model_bytes_down_per_client": float(np.mean(list(grid.model_down.values()))),
    }
