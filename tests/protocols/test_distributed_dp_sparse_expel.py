"""Expelling cheaters on a sparse SecAgg+ graph never leaves fewer inputs than the noise is
sized for, although each client sees only the cheaters it masked with (found by a second
adversarial review; the test failed before survivors counted unseen survivors as expelled)."""

from __future__ import annotations

from test_distributed_dp_attacks import (
    _secagg_round,
    _secagg_spec,
    _sites_in,
    _SkipsItsOwnThresholdCheck,
    _updates,
)

from fedshield.crypto.ddg import DiscreteGaussianEncoding
from fedshield.protocols.secagg import SecAggClient
from fedshield.protocols.secagg.channels import deal
from fedshield.protocols.secagg.config import neighbour_graph

SITES, DROPPED = 6, 5  # --neighbours 4 of 6: each client misses exactly one other


def _cheaters(graph: dict[int, tuple[int, ...]]) -> set[int]:
    """In the 4-regular graph on 6 clients (the complement of a perfect matching), the plan:
    ``DROPPED`` drops at ``masked_input``; its non-neighbour ``Z`` cheats; of each other
    non-adjacent pair ``(A, X)``, the larger cheats. Each honest client then masked with
    exactly two of the three cheaters."""
    everyone = set(graph)
    missing = {c: next(iter(everyone - {c} - set(graph[c]))) for c in everyone}
    cheaters = {missing[DROPPED]}
    for c in sorted(everyone - {DROPPED, missing[DROPPED]}):
        cheaters.add(max(c, missing[c]))
    return cheaters


class _CheatsWhenThePlanSaysSo(SecAggClient):
    """A client that, once the round's graph is known (at ``share_keys``), deals garbage
    shares of its seed (each holder's from its own polynomial) if the plan makes it a
    cheater; otherwise an honest client."""

    cheats = False

    def _deal(self, holders, receive):
        graph = neighbour_graph(sorted(self.mask_public_keys), self.config.degree(self.n),
                                self.graph_seed)  # fmt: skip
        self.cheats = self.client_id in _cheaters(graph)
        if not self.cheats or not holders:
            return super()._deal(holders, receive)

        def dealt():
            return deal(self.channel_keys, holders, receive, round=self.round,
                        seed=self.self_mask_seed, threshold=self.threshold,
                        mask_key=self.mask_keys.private_bytes(), sender=self.client_id)  # fmt: skip

        sealed, commitments = dealt()
        for i in range(len(holders)):
            sealed[i], commitments[i] = (part[i] for part in dealt())
        return sealed, commitments, self._sign_deal(holders, sealed, commitments)


def test_secagg_expelling_cheaters_that_each_client_sees_only_in_part_stays_above_the_floor(
    monkeypatch,
):
    """The first review's fix: a survivor refuses ``expel`` when ``|U_3|`` less the cheaters
    *named to it* falls below ``t``. In a sparse graph each survivor is named only the
    cheaters it masked with, so several cheaters spread over different neighbourhoods pass
    every survivor's local count while their union takes the sum below ``t``.

    6 sites, ``--neighbours 4`` (``t`` = 3, quorum 5), ``--dp-colluders 0``: one site drops at
    ``masked_input``, three deal garbage, ``U_3`` = 5. Each honest survivor masked with two of
    the three cheaters: it computes 5 - 2 = 3 >= t and reveals its seeds; the server (skipping
    its own count, as in the first review's attack) unmasks the sum of the 2 honest sites,
    whose noise is sized for 3."""
    dim = 64
    spec, _roster, identities = _secagg_spec(SITES, dim, dp_colluders=0, neighbours=4)
    encoding: DiscreteGaussianEncoding = spec.config.noise
    assert encoding.min_sites == 3 and encoding.colluders == 0
    ids = list(range(SITES))
    built = []
    original = spec.client

    def client(**kwargs):
        session = _CheatsWhenThePlanSaysSo(config=spec.config, roster=spec.roster, **kwargs)
        built.append(session)
        return session

    monkeypatch.setattr(type(spec), "client", lambda self, **kwargs: client(**kwargs))
    try:
        server, outcome = _secagg_round(
            spec, identities, ids, _updates(ids, dim), schedule={"masked_input": [DROPPED]},
            server_class=_SkipsItsOwnThresholdCheck,
        )  # fmt: skip
    finally:
        monkeypatch.setattr(type(spec), "client", original)
    cheaters = {s.client_id for s in built if s.cheats}
    assert len(cheaters) == 3 and set(server.cheaters) == cheaters, (cheaters, server.cheaters,
                                                                      outcome.aborted)  # fmt: skip
    held = None if server.unmasked is None else _sites_in(server, encoding)
    assert held is None or held >= encoding.min_sites, (
        f"the server unmasked a sum of {held} sites after expelling {sorted(cheaters)} (each "
        f"survivor was named only the cheaters it masked with); the noise is sized for "
        f"{encoding.min_sites} sites (outcome: {outcome.aborted})"
    )
