"""SecAgg+'s building blocks on their own: the neighbour graph and stochastic rounding."""

import numpy as np

from fedshield.crypto import ring
from fedshield.protocols.secagg.config import default_neighbours, neighbour_graph


def test_neighbour_graph_is_regular_symmetric_and_seeded():
    clients = list(range(100))
    k = default_neighbours(100)
    assert k < 99 and k % 2 == 0
    g = neighbour_graph(clients, k, b"\x01" * 32)
    assert all(len(v) == k for v in g.values())
    assert all(i in g[j] for i in g for j in g[i])
    assert g == neighbour_graph(clients, k, b"\x01" * 32)
    assert g != neighbour_graph(clients, k, b"\x02" * 32)
    assert default_neighbours(10) == 9  # small rounds use the complete graph


def test_stochastic_rounding_is_unbiased_and_within_one_step():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 1000).astype(np.float32)
    step = 2.0 / 255
    draws = np.stack([ring.quantize(x, clip=1.0, quant_bits=8, seed=s) for s in range(400)])
    values = draws.astype(np.float64) * step - 1.0
    assert np.abs(values - x).max() <= step + 1e-9
    assert np.abs(values.mean(axis=0) - x).max() < 4 * step / np.sqrt(400)
