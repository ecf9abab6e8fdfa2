"""What an in-process round counts as sent down to start it: what a deployed site receives."""

import pytest

from fedshield.engine import Federation, make_site
from fedshield.engine.global_model import he_round_start
from fedshield.engine.models import SmallCNN


def _stage_bytes_down(record) -> float:
    """The protocol's own messages down, per client (the record's stages)."""
    per_stage = [sum(stage.bytes_down.values()) / len(stage.bytes_down) for stage in record.stages]
    return sum(per_stage)


@pytest.mark.parametrize("protect", ["plain", "secagg", "he"])
def test_bytes_down_counts_the_model_broadcast_except_under_he(tiny_sites, protect):
    """Under ``he`` a deployed site holds the model and gets only the round-start message
    (noticed in issue 17: the in-process record counted the whole model)."""
    sites = [make_site(s, batch_size=8, seed=i) for i, s in enumerate(tiny_sites)]
    fed = Federation(model_factory=lambda: SmallCNN(width=4), sites=sites, protect=protect)
    model_bytes = len(fed.server.broadcast())
    for round in (1, 2):
        record = fed.run_round()
        start = record.bytes_down_per_client - _stage_bytes_down(record)
        expected = len(he_round_start(round, round - 1)) if protect == "he" else model_bytes
        assert start == pytest.approx(expected)
        assert (start < 100) == (protect == "he")
