"""A threshold-``he`` federation for protocol tests: the collective key generated through the
real sessions, and round sessions made on it."""

from dataclasses import replace
from functools import cache

import numpy as np
from enrolment import enrol

from fedshield.engine.runner import run_protocol
from fedshield.engine.transport import InProcessTransport
from fedshield.protocols.he.params import HEConfig, plan_for
from fedshield.protocols.he.threshold import ThresholdClient, ThresholdServer
from fedshield.protocols.he.threshold_keys import (
    ThresholdKeySetupClient,
    ThresholdKeySetupServer,
)

CONFIG = HEConfig(keys="threshold", clip=0.5, quant_bits=8, weight_bits=8, max_weight=100.0)
DIM = 20_000


@cache
def federation(n: int = 3, dim: int = DIM, threshold: int | None = None):
    """``(plan, roster, identities, keyrings)`` after a real key generation among ``n`` sites
    (``threshold``: how many decrypt; every site by default)."""
    roster, identities = enrol(n)
    plan = plan_for(replace(CONFIG, threshold=threshold), n_clients=n, dim=dim)
    sites = {
        c: ThresholdKeySetupClient(client_id=c, plan=plan, roster=roster, identity=identities[c])
        for c in range(n)
    }
    server = ThresholdKeySetupServer(
        round=0, clients=list(range(n)), dim=1, plan=plan, roster=roster
    )
    outcome = run_protocol(server, InProcessTransport(sites))
    assert outcome.aborted is None, outcome.aborted
    return plan, roster, identities, {c: s.keyring for c, s in sites.items()}


def updates(n: int, dim: int = DIM, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-0.5, 0.5, dim).astype(np.float32) for _ in range(n)]


def round_sessions(
    n: int = 3, round: int = 1, server_class=ThresholdServer, dim: int = DIM, threshold=None
):
    """``(server, clients)`` of one round over fresh updates (weights 10, 20, ...)."""
    plan, roster, identities, keyrings = federation(n, dim, threshold)
    clients = {
        c: ThresholdClient(
            client_id=c, round=round, update=u, weight=10.0 * (c + 1), keyring=keyrings[c],
            roster=roster, identity=identities[c], quant_seed=100 + c,
        )
        for c, u in enumerate(updates(n, dim))
    }  # fmt: skip
    server = server_class(round=round, clients=list(range(n)), dim=dim, plan=plan, roster=roster)
    return server, clients


def drive(server, clients, upto: str) -> None:
    """Run the stages before ``upto`` (the server's own, honest or not)."""
    for stage in server.stages:
        if stage == upto:
            return
        for c, m in server.broadcast(stage).items():
            server.receive(stage, c, clients[c].handle(stage, m))
        server.close_stage(stage)
