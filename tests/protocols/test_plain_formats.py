"""``plain`` with quantized and top-k payloads: exact against what the clients sent, real
packed bytes, and malformed input rejected while the honest round completes."""

import numpy as np
import pytest

from fedshield import wire
from fedshield.compress.bitpack import packed_size
from fedshield.compress.sparsify import topk_exact
from fedshield.engine.runner import run_protocol
from fedshield.engine.transport import InProcessTransport
from fedshield.errors import MalformedMessage, NonFiniteValues, WrongShape
from fedshield.protocols.plain import PlainClient, PlainFormat, PlainServer, index_bits

DIM = 3000


def _clients(n, fmt, seed=0):
    rng = np.random.default_rng(seed)
    clients = {}
    for c in range(n):
        update = rng.normal(0, 0.1, DIM).astype(np.float32)
        indices = topk_exact(update, fmt.k) if fmt.k else None
        clients[c] = PlainClient(
            client_id=c,
            round=0,
            update=update if indices is None else update[indices],
            weight=float(c + 1),
            payload_format=fmt,
            indices=indices,
            quant_seed=c,
        )
    return clients


def _expected(clients, ids):
    total = np.zeros(DIM)
    for c in ids:
        dense = np.zeros(DIM)
        idx = clients[c].indices if clients[c].indices is not None else slice(None)
        dense[idx] = clients[c].sent
        total += clients[c].weight * dense
    return total


@pytest.mark.parametrize(
    "fmt",
    [
        PlainFormat(quant_bits=8),
        PlainFormat(quant_bits=3, chunk=100),
        PlainFormat(k=30),
        PlainFormat(quant_bits=12, chunk=64, k=300),
    ],
)
def test_server_sums_exactly_what_clients_sent_in_packed_bytes(fmt):
    clients = _clients(3, fmt)
    server = PlainServer(round=0, clients=clients, dim=DIM, payload_format=fmt)
    outcome = run_protocol(server, InProcessTransport(clients))
    np.testing.assert_allclose(outcome.revealed.weighted_sum, _expected(clients, range(3)))
    n = fmt.n_values(DIM)
    payload = 4 * n if fmt.quant_bits is None else packed_size(n, fmt.quant_bits)
    payload += 8 * -(-n // fmt.chunk) if fmt.quant_bits else 0
    payload += packed_size(n, index_bits(DIM)) if fmt.k else 0
    sent = outcome.stages[0].bytes_up[0]
    assert payload < sent < payload + 200  # header and field lengths only
    for c in clients.values():  # quantized values stay within a step of the input
        if fmt.quant_bits:
            assert np.abs(c.sent - c.update).max() <= np.ptp(c.update) / (2**fmt.quant_bits - 1)


def _tamper(answer: bytes, fmt: PlainFormat, case: str) -> bytes:
    msg = wire.parse(answer)
    fields = list(msg.fields)
    if case == "nan range":
        low = fields[2].copy()
        low[0] = np.nan
        fields[2] = low
    elif case == "negative step":
        step = fields[3].copy()
        step[0] = -1.0
        fields[3] = step
    elif case == "short levels":
        fields[1] = fields[1][:-1]
    elif case == "unsorted indices":
        from fedshield.compress.bitpack import pack, unpack

        bits = index_bits(DIM)
        idx = unpack(fields[-1], fmt.k, bits)[::-1].copy()
        fields[-1] = pack(idx, bits)
    elif case == "index out of range":
        from fedshield.compress.bitpack import pack

        bits = index_bits(DIM)
        fields[-1] = pack(np.arange(DIM - fmt.k + 1, DIM + 1, dtype=np.uint64), bits)
    elif case == "missing indices":
        fields = fields[:-1]
    return wire.serialize(msg.header, fields)


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("nan range", NonFiniteValues),
        ("negative step", WrongShape),
        ("short levels", WrongShape),
        ("unsorted indices", WrongShape),
        ("index out of range", WrongShape),
        ("missing indices", WrongShape),
    ],
)
def test_malformed_compressed_input_is_rejected_and_the_round_completes(case, error):
    fmt = PlainFormat(quant_bits=8, chunk=500, k=1000)
    clients = _clients(3, fmt)
    server = PlainServer(round=0, clients=clients, dim=DIM, payload_format=fmt)
    request = server.broadcast("input")
    answers = {c: clients[c].handle("input", request[c]) for c in clients}
    server.receive("input", 0, answers[0])
    with pytest.raises(error):
        server.receive("input", 1, _tamper(answers[1], fmt, case))
    server.receive("input", 2, answers[2])
    server.close_stage("input")
    revealed = server.reveal()
    np.testing.assert_allclose(revealed.weighted_sum, _expected(clients, [0, 2]))
    assert revealed.dropped == (1,)


def test_oversized_compressed_message_and_format_mismatch():
    fmt = PlainFormat(quant_bits=4)
    clients = _clients(1, fmt)
    server = PlainServer(round=0, clients=clients, dim=DIM, payload_format=fmt)
    request = server.broadcast("input")[0]
    answer = clients[0].handle("input", request)
    with pytest.raises(MalformedMessage):
        server.receive("input", 0, answer + bytes(fmt.max_bytes(DIM)))
    other = PlainClient(
        client_id=0,
        round=0,
        update=np.zeros(DIM, np.float32),
        weight=1.0,
        payload_format=PlainFormat(quant_bits=8),
    )
    with pytest.raises(WrongShape):
        other.handle("input", request)
    with pytest.raises(ValueError):
        PlainFormat(quant_bits=17)
