"""Adaptive ranges in the engine: the global model keeps and broadcasts the exponents, moves
them with each round's statistic, rand-k maps tensors to segments, and a broadcast that
carries bad exponents (or none, where the protocol needs them) is refused with the reason."""

from __future__ import annotations

import numpy as np
import pytest

from fedshield import wire
from fedshield.engine.compression import Compression, UpdateCompressor
from fedshield.engine.experiment import RunConfig, build_federation
from fedshield.engine.site import parse_broadcast
from fedshield.errors import WrongShape
from fedshield.protocols.ranges import (
    INITIAL_EXPONENT,
    INITIAL_STATE_EXPONENT,
    MAX_EXPONENT,
)
from fedshield.protocols.registry import MODEL_BROADCAST


def _federation(**options):
    return build_federation(RunConfig(sites=3, rounds=2, local_epochs=1, seed=1, **options))


def test_ranges_start_per_kind_move_each_round_and_travel_with_the_model():
    fed = _federation(protect="secagg", model="cnn")  # BatchNorm: buffers travel too
    model = fed.server.model
    kinds = [e.trainable for e in fed.spec.entries]
    assert model.range_exponents == tuple(
        INITIAL_EXPONENT if t else INITIAL_STATE_EXPONENT for t in kinds
    )
    _, exponents = parse_broadcast(
        fed.server.broadcast(), round=1, dim=fed.spec.dim, tensors=len(kinds)
    )
    assert exponents == model.range_exponents
    fed.run_round()
    assert fed.protocol.describe()["clip"] == "adaptive"
    assert model.range_exponents != exponents  # round one's statistic moved them
    # Weights move by about lr x steps (~0.01 here), so their ranges shrink below 2^-3.
    assert min(model.range_exponents) < INITIAL_EXPONENT


def test_a_fixed_clip_keeps_the_old_broadcast_and_no_statistic():
    fed = _federation(protect="secagg", clip=0.1)
    assert fed.server.model.range_exponents is None
    _, exponents = parse_broadcast(
        fed.server.broadcast(), round=1, dim=fed.spec.dim, tensors=len(fed.spec.sizes)
    )
    assert exponents is None
    assert fed.protocol.describe()["clip"] == 0.1


def test_he_sites_move_the_ranges_from_what_they_decrypt():
    fed = _federation(protect="he")
    start = fed.server.model.range_exponents
    fed.run_round()
    assert fed.server.model.range_exponents != start


def test_randk_segments_follow_the_tensors_kept_values():
    sizes = (40, 7, 13, 3)
    compressor = UpdateCompressor(
        Compression.parse("randk:0.25"), dim=sum(sizes), seed=0, n_trainable=60
    )
    ranges = compressor.ranges(2, sizes, (0, -1, -2, -3))
    indices = compressor.shared_indices(2)
    owner = np.searchsorted(np.cumsum(sizes), indices, side="right")  # tensor of each index
    assert ranges.sizes == tuple(np.bincount(owner, minlength=len(sizes)).tolist())
    assert ranges.dim == compressor.protocol_dim and ranges.sizes[-1] == 3  # buffers: all


def _broadcast(fields):
    return wire.serialize(wire.Header(MODEL_BROADCAST, 0, 1, wire.SERVER_ID), fields)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ([np.zeros(4, "<f4"), np.array([0, 1, 2], "<i4")], "shape"),
        ([np.zeros(4, "<f4"), np.array([0, MAX_EXPONENT + 1], "<i4")], "outside"),
        ([np.zeros(4, "<f4"), np.array([0, 1], "<u4")], "dtype"),
        ([np.zeros(4, "<f4"), np.array([0, 1], "<i4"), b"x"], "1 or 2 fields"),
    ],
)
def test_a_broadcast_with_bad_exponents_is_refused(fields, message):
    with pytest.raises(WrongShape, match=message):
        parse_broadcast(_broadcast(fields), round=1, dim=4, tensors=2)


def test_a_site_under_adaptive_ranges_refuses_a_broadcast_without_them():
    fed = _federation(protect="secagg")
    runtime = fed.runtimes[0]
    bare = _broadcast([fed.server.model.vector])
    with pytest.raises(WrongShape, match="carries none"):
        runtime.train(bare, 1)
