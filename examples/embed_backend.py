"""Embed fedshield's SecAgg+ as the secure-aggregation backend of another FL framework.

The "framework" here is a plain dict of queues: it owns the message passing and the models;
fedshield only provides the protocol sessions (server + clients) and the wire format.
No fedshield engine or CLI is involved. The server learns only the weighted mean.
"""

from collections import deque

import numpy as np

from fedshield.protocols.roster import Roster
from fedshield.protocols.secagg import SecAggClient, SecAggServer
from fedshield.protocols.secagg.config import SecAggConfig


def main(n_clients: int = 3, dim: int = 5, round_number: int = 0) -> np.ndarray:
    rng = np.random.default_rng(0)
    updates = {c: rng.normal(size=dim).astype(np.float32) for c in range(n_clients)}
    weights = {c: float(10 * (c + 1)) for c in range(n_clients)}

    # The foreign framework's own mailboxes: one inbox per party.
    to_client = {c: deque() for c in range(n_clients)}
    to_server: deque = deque()

    config = SecAggConfig(clip=4.0, quant_bits=12, max_weight=max(weights.values()))
    # Enrolment, once per federation: each site's identity key signs its round keys.
    roster, identities = Roster.enrol(updates, min_sites=2)
    server = SecAggServer(round=round_number, clients=list(updates), dim=dim, config=config,
                          roster=roster)  # fmt: skip
    clients = {
        c: SecAggClient(client_id=c, round=round_number, update=updates[c], weight=weights[c],
                        config=config, roster=roster, identity=identities[c])
        for c in updates
    }  # fmt: skip
    for stage in server.stages:
        for cid, message in server.broadcast(stage).items():
            to_client[cid].append(message)  # bytes travel through the framework
        for cid, inbox in to_client.items():
            while inbox:
                to_server.append((cid, clients[cid].handle(stage, inbox.popleft())))
        while to_server:
            sender, data = to_server.popleft()
            server.receive(stage, sender, data)
        server.close_stage(stage)

    revealed = server.reveal()
    mean = revealed.weighted_sum / revealed.total_weight
    expected = sum(weights[c] * updates[c].astype(np.float64) for c in updates) / sum(
        weights.values()
    )
    assert np.allclose(mean, expected, atol=0.01), "aggregate differs from the weighted mean"
    print(f"aggregated {len(revealed.contributors)} clients; mean update = {np.round(mean, 4)}")
    return mean


if __name__ == "__main__":
    main()
