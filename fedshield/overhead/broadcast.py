"""What a site downloads each round besides the protocol's messages: the model, as fedshield's
engine sends it to a deployed site (the ``bytes_down_with_model`` column's addition).

- ``plain`` and ``secagg``: the server's "here is the global model" message,
  :meth:`GlobalModel.broadcast <fedshield.engine.global_model.GlobalModel.broadcast>` itself:
  the wire header, the float32 model and, under adaptive ranges, one int32 exponent per tensor.
- ``he``: the server never learns the aggregate; every site decrypts it and applies it to the
  model it holds. Over Flower a round therefore starts with a short message, never the model:
  the round and the last round that produced an aggregate
  (:func:`~fedshield.engine.global_model.he_round_start`, which the Flower server app sends).

(The in-process :class:`~fedshield.engine.federation.Federation` sends every site the model
broadcast under every protection: it is a simulation, not what a deployed ``he`` site gets.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedshield.engine.global_model import he_round_start
from fedshield.protocols.registry import ProtocolSpec

__all__ = ["model_broadcast_bytes"]


def model_broadcast_bytes(spec: ProtocolSpec, shapes: Sequence[tuple[int, ...]]) -> int:
    """Bytes of round 1's model message to one site under ``spec``, for a model whose
    exchanged tensors have ``shapes`` (every tensor trainable: the size does not depend on it).

    Raises:
        ValueError: no shapes.
    """
    from fedshield.engine.compression import Compression, UpdateCompressor
    from fedshield.engine.global_model import GlobalModel
    from fedshield.engine.paramspec import ParamEntry, ParamSpec

    if not shapes:
        raise ValueError("model_broadcast_bytes needs the model's tensor shapes, got none")
    if spec.name == "he":
        return len(he_round_start(1, 0))
    entries, offset = [], 0
    for i, shape in enumerate(shapes):
        size = math.prod(shape)
        entries.append(ParamEntry(f"t{i}", tuple(shape), offset, size, trainable=True))
        offset += size
    params = ParamSpec(entries)
    compressor = UpdateCompressor(
        Compression(), dim=params.dim, seed=0, n_trainable=params.n_trainable
    )
    model = GlobalModel(
        spec=params, vector=np.zeros(params.dim, np.float32), compressor=compressor,
        adaptive_ranges=spec.adaptive,
    )  # fmt: skip
    return len(model.broadcast(1))
