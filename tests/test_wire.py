import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield import wire
from fedshield.errors import (
    MalformedMessage,
    StageError,
    UnknownSender,
    WrongRound,
    WrongShape,
)


def _message():
    header = wire.Header(protocol=1, stage=2, round=7, sender=3)
    fields = [b"abc", np.arange(5, dtype=np.float32), np.ones((2, 3), dtype=np.uint8)]
    return header, fields, wire.serialize(header, fields)


def test_round_trip_keeps_header_and_fields():
    header, fields, data = _message()
    msg = wire.parse(data)
    assert msg.header == header
    assert msg.raw(0) == b"abc"
    np.testing.assert_array_equal(msg.array(1, dtype="<f4", shape=(5,)), fields[1])
    np.testing.assert_array_equal(msg.array(2, dtype="<u1", shape=(2, 3)), fields[2])


def test_every_truncation_is_rejected():
    _, _, data = _message()
    for cut in range(len(data)):
        with pytest.raises(MalformedMessage):
            wire.parse(data[:cut])


def test_trailing_bytes_bad_magic_version_and_size_are_rejected():
    _, _, data = _message()
    with pytest.raises(MalformedMessage, match="body length"):
        wire.parse(data + b"\0")
    with pytest.raises(MalformedMessage, match="magic"):
        wire.parse(b"XXXX" + data[4:])
    with pytest.raises(MalformedMessage, match="version"):
        wire.parse(data[:4] + bytes([99]) + data[5:])
    with pytest.raises(MalformedMessage, match="limit"):
        wire.parse(data, max_bytes=len(data) - 1)


def test_unknown_dtype_code_is_rejected():
    header = wire.Header(1, 1, 0, 0)
    data = bytearray(wire.serialize(header, [np.zeros(2, np.float32)]))
    data[21] = 200  # the dtype code of the first field
    with pytest.raises(MalformedMessage, match="dtype"):
        wire.parse(bytes(data))


def test_expectations_raise_typed_errors():
    _, _, data = _message()
    msg = wire.parse(data)
    msg.expect(protocol=1, stage=2, round=7, sender=3)
    with pytest.raises(WrongRound):
        msg.expect(protocol=1, stage=2, round=8, sender=3)
    with pytest.raises(StageError):
        msg.expect(protocol=1, stage=1, round=7, sender=3)
    with pytest.raises(UnknownSender):
        msg.expect(protocol=1, stage=2, round=7, sender=4)
    with pytest.raises(WrongShape):
        msg.array(1, dtype="<f8")
    with pytest.raises(WrongShape):
        msg.array(1, dtype="<f4", shape=(6,))
    with pytest.raises(WrongShape):
        msg.raw(1)
    with pytest.raises(WrongShape):
        msg.array(5, dtype="<f4")


def test_parsed_arrays_are_read_only_views():
    _, _, data = _message()
    arr = wire.parse(data).array(1, dtype="<f4")
    with pytest.raises(ValueError):
        arr[0] = 1.0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_ever_raise_malformed(data):
    with contextlib.suppress(MalformedMessage):
        wire.parse(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_bit_flips_in_a_valid_message_never_crash(data):
    _, _, valid = _message()
    buf = bytearray(valid)
    pos = data.draw(st.integers(0, len(buf) - 1))
    buf[pos] ^= 1 << data.draw(st.integers(0, 7))
    with contextlib.suppress(MalformedMessage):
        wire.parse(bytes(buf))
