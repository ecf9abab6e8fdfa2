"""``plain``: no protection. Each client sends its encoded update; the server sees every one.

Threat model: none. The server (and anyone on the path without TLS) learns each site's update.
It is the baseline the protected protocols are measured against, and the protocol of choice
only when the server is fully trusted. Any number of dropouts is tolerated: the aggregate is over
whoever answered with a valid update.

Payload (both sides agree on a :class:`PlainFormat`; the server's request states it and the
client checks it): ``n`` values, float32 or stochastically quantized to ``quant_bits`` with a
``(low, step)`` pair per chunk and bit-packed; with ``k`` set (top-k), ``n = k`` and the message
also carries the sorted coordinates, bit-packed at ``ceil(log2 dim)`` bits each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedshield import wire
from fedshield._validate import check_instance, check_int
from fedshield.compress.accumulate import add_scaled, all_finite
from fedshield.compress.bitpack import pack, packed_size, unpack
from fedshield.compress.quantize import (
    DEFAULT_CHUNK,
    MAX_BITS,
    dequantize_chunked,
    quantize_chunked,
)
from fedshield.errors import ConfigError, NonFiniteValues, ProtocolAbort, WrongShape
from fedshield.protocols.base import (
    ClientSession,
    Revealed,
    ServerSession,
    broadcasts,
    closes,
    handles,
    receives,
)
from fedshield.protocols.ids import ProtocolId, StrEnum

__all__ = ["PROTOCOL_ID", "STAGES", "PlainClient", "PlainFormat", "PlainServer", "PlainStage"]


class PlainStage(StrEnum):
    """The one stage of ``plain``: each client sends its update."""

    INPUT = "input"


PROTOCOL_ID = ProtocolId.PLAIN
STAGES: tuple[PlainStage, ...] = tuple(PlainStage)


@dataclass(frozen=True)
class PlainFormat:
    """How a ``plain`` update travels.

    Args:
        quant_bits: ``None`` for float32, else 1..16 bits per value (per-chunk range).
        chunk: values per ``(low, step)`` pair when quantized.
        k: ``None`` for dense updates, else how many ``(index, value)`` pairs each client sends.
    """

    quant_bits: int | None = None
    chunk: int = DEFAULT_CHUNK
    k: int | None = None

    def __post_init__(self) -> None:
        check_int("quant_bits", self.quant_bits, low=1, high=MAX_BITS, optional=True,
                  error=ConfigError)  # fmt: skip
        check_int("chunk", self.chunk, low=1, error=ConfigError)
        check_int("k", self.k, low=1, optional=True, error=ConfigError)

    def n_values(self, dim: int) -> int:
        """Values per client message."""
        return dim if self.k is None else min(self.k, dim)

    def header(self, dim: int) -> np.ndarray:
        """What the server's request states, for the client to check."""
        return np.array(
            [dim, self.n_values(dim), self.quant_bits or 0, self.chunk, self.k is not None],
            dtype=np.uint64,
        )

    def max_bytes(self, dim: int) -> int:
        """Upper bound of a client message."""
        n = self.n_values(dim)
        values = 4 * n if self.quant_bits is None else packed_size(n, self.quant_bits)
        chunks = 8 * -(-n // self.chunk) if self.quant_bits else 0
        indices = packed_size(n, index_bits(dim)) if self.k is not None else 0
        return 256 + values + chunks + indices


def index_bits(dim: int) -> int:
    """Bits per packed coordinate of a ``dim``-long vector."""
    return max(1, (dim - 1).bit_length())


class PlainServer(ServerSession):
    """Server side of ``plain``: checks each update and adds it to a running weighted sum.

    Example:
        >>> import numpy as np
        >>> server = PlainServer(round=0, clients=[0], dim=3)
        >>> client = PlainClient(client_id=0, round=0, update=np.ones(3, np.float32), weight=2.0)
        >>> request = server.broadcast(PlainStage.INPUT)[0]
        >>> server.receive("input", 0, client.handle("input", request))
        >>> server.close_stage("input")
        >>> server.reveal().weighted_sum.tolist()
        [2.0, 2.0, 2.0]
    """

    protocol_id = PROTOCOL_ID
    stages = STAGES

    def __init__(
        self,
        *,
        round: int,
        clients,
        dim: int,
        payload_format: PlainFormat | None = None,
    ) -> None:
        super().__init__(round=round, clients=clients, dim=dim)
        self.format = _check_format(payload_format)
        self._sum = np.zeros(dim, dtype=np.float64)
        self._total_weight = 0.0
        self._weights: dict[int, float] = {}

    def describe(self) -> dict:
        """The payload format of this round."""
        f = self.format
        return {"quant_bits": f.quant_bits, "chunk": f.chunk if f.quant_bits else None, "k": f.k}

    @broadcasts(PlainStage.INPUT)
    def _request_input(self, stage: str) -> dict[int, bytes]:
        request = self._server_message(stage, [self.format.header(self.dim)])
        return {cid: request for cid in sorted(self.alive)}

    def _max_message_bytes(self, stage: str) -> int:
        return self.format.max_bytes(self.dim)

    @receives(PlainStage.INPUT)
    def _receive_input(self, stage: str, sender: int, message: wire.Message) -> None:
        f = self.format
        n = f.n_values(self.dim)
        quantized = f.quant_bits is not None
        message.require_fields(2 + 2 * quantized + (f.k is not None))
        weight = float(message.array(0, dtype="<f8", shape=(1,))[0])
        if not np.isfinite(weight) or weight <= 0:
            raise WrongShape(f"client {sender} sent weight {weight}; it must be positive")
        if quantized:
            levels = unpack(message.raw(1, length=packed_size(n, f.quant_bits)), n, f.quant_bits)
            chunks = -(-n // f.chunk)
            low = message.array(2, dtype="<f4", shape=(chunks,))
            step = message.array(3, dtype="<f4", shape=(chunks,))
            if not (np.isfinite(low).all() and np.isfinite(step).all()):
                raise NonFiniteValues(f"client {sender} sent a NaN or infinite chunk range")
            if (step < 0).any():
                raise WrongShape(f"client {sender} sent a negative quantization step")
            values = dequantize_chunked(levels.astype(np.uint16), low, step, chunk=f.chunk)
        else:
            values = message.array(1, dtype="<f4", shape=(n,))
        if not all_finite(values):
            raise NonFiniteValues(f"client {sender} sent an update with NaN or infinity")
        indices = None
        if f.k is not None:
            bits = index_bits(self.dim)
            packed = message.raw(len(message.fields) - 1, length=packed_size(n, bits))
            indices = unpack(packed, n, bits).astype(np.int64)
            if (n and indices[-1] >= self.dim) or (np.diff(indices) <= 0).any():
                raise WrongShape(
                    f"client {sender} sent coordinates that are not sorted or in range"
                )
        # Only valid input reaches the sum, so a rejected client never corrupts it.
        if indices is None:
            add_scaled(self._sum, weight, values)  # one pass, no temporaries
        else:
            self._sum[indices] += weight * values.astype(np.float64)
        self._total_weight += weight
        self._weights[sender] = weight

    @closes(PlainStage.INPUT)
    def _close_input(self, stage: str) -> None:
        if not self._weights:
            raise ProtocolAbort(f"round {self.round}: no client delivered a valid update")

    def _reveal(self) -> Revealed:
        contributors = tuple(sorted(self._weights))
        return Revealed(
            contributors=contributors,
            weighted_sum=self._sum,
            total_weight=self._total_weight,
            dropped=tuple(c for c in self.clients if c not in self._weights),
        )


class PlainClient(ClientSession):
    """Client side of ``plain``: sends ``(weight, update)`` in the clear, encoded per the
    :class:`PlainFormat` (with ``indices`` for top-k: the coordinates ``update`` holds)."""

    protocol_id = PROTOCOL_ID
    stages = STAGES

    def __init__(
        self,
        *,
        client_id: int,
        round: int,
        update: np.ndarray,
        weight: float,
        payload_format: PlainFormat | None = None,
        indices: np.ndarray | None = None,
        quant_seed: int | None = None,
    ) -> None:
        super().__init__(
            client_id=client_id, round=round, update=update, weight=weight, quant_seed=quant_seed
        )
        self.format = _check_format(payload_format)
        if (indices is None) != (self.format.k is None):
            raise ValueError(
                "indices: pass the update's coordinates exactly when payload_format.k is set"
            )
        if indices is not None:
            check_instance("indices", indices, np.ndarray, "sorted int coordinates")
            if indices.dtype.kind not in "iu" or indices.shape != update.shape:
                raise ValueError("indices must be integer coordinates, one per update value")
        self.indices = indices

    @handles(PlainStage.INPUT)
    def _send_input(self, stage: str, message: wire.Message) -> bytes:
        message.require_fields(1)
        stated = message.array(0, dtype="<u8", shape=(5,))
        dim = int(stated[0])
        f = self.format
        if self.indices is None and dim != self.update.size:
            raise WrongShape(f"server expects {dim} values, this client has {self.update.size}")
        if not np.array_equal(stated, f.header(dim)):
            raise WrongShape("the server's payload format differs from this client's")
        fields: list = [np.array([self.weight], dtype=np.float64)]
        if f.quant_bits is None:
            self.sent = self.update
            fields.append(self.update)
        else:
            levels, low, step = quantize_chunked(
                self.update, bits=f.quant_bits, seed=self.quant_seed, chunk=f.chunk
            )
            self.sent = dequantize_chunked(levels, low, step, chunk=f.chunk)
            fields += [pack(levels, f.quant_bits), low, step]
        if self.indices is not None:
            fields.append(pack(self.indices.astype(np.uint64), index_bits(dim)))
        return self._client_message(stage, fields)


def _check_format(payload_format: PlainFormat | None) -> PlainFormat:
    if payload_format is None:
        return PlainFormat()
    check_instance("payload_format", payload_format, PlainFormat, "or None for float32")
    return payload_format
