"""Several unsigned values per 64-bit slot, at fixed bit offsets (numba kernels).

Packed homomorphic aggregation puts ``per_slot`` values of ``bits`` bits into each slot of a
row of ``slots`` slots; the sum of many such rows adds every field on its own as long as no
field's sum outgrows ``bits`` (the caller sizes ``bits`` for that). Value ``i`` goes to row
``i // (slots·per_slot)``, field ``k // slots`` and slot ``k % slots`` (``k`` its index within
the row), so a row's first field holds its first ``slots`` values in order. ``pack_fields``
multiplies every value by ``scale`` on the way (an integer FedAvg weight). The numpy versions
are the test oracles.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from fedshield.compress._parallel import parallel_kernel

__all__ = ["pack_fields", "pack_fields_reference", "unpack_fields", "unpack_fields_reference"]


def _check(per_slot: int, bits: int, slots: int) -> None:
    if per_slot < 1 or slots < 1 or not 1 <= bits <= 63 or per_slot * bits > 64:
        raise ValueError(f"{per_slot} fields of {bits} bits do not fit a 64-bit slot")


def pack_fields(
    values: np.ndarray, *, rows: int, slots: int, per_slot: int, bits: int, scale: int = 1
) -> np.ndarray:
    """``(rows, slots)`` uint64 holding ``values * scale`` (unsigned ints; each product must
    be below ``2^bits``); fields past the end are zero."""
    _check(per_slot, bits, slots)
    if values.size > rows * slots * per_slot:
        raise ValueError(f"{values.size} values do not fit {rows} rows")
    if values.dtype.kind != "u":
        raise TypeError(f"values must be unsigned integers, got {values.dtype}")
    out = np.empty(rows * slots, dtype=np.uint64)
    _pack(np.ascontiguousarray(values), np.uint64(scale), per_slot, bits, slots, out)
    return out.reshape(rows, slots)


def unpack_fields(packed: np.ndarray, *, length: int, per_slot: int, bits: int) -> np.ndarray:
    """The first ``length`` values (uint64) of ``(rows, slots)`` packed rows."""
    rows, slots = packed.shape
    _check(per_slot, bits, slots)
    if length > rows * slots * per_slot:
        raise ValueError(f"{rows} rows hold fewer than {length} values")
    out = np.empty(length, dtype=np.uint64)
    _unpack(np.ascontiguousarray(packed, dtype=np.uint64).reshape(-1), per_slot, bits, slots, out)
    return out


@parallel_kernel
def _pack(values, scale, per_slot, bits, slots, out):  # pragma: no cover - compiled
    n = np.uint64(values.size)
    width = np.uint64(bits)
    stride = np.uint64(slots)
    per_row = stride * np.uint64(per_slot)
    for r in prange(out.size // slots):
        row = np.uint64(r)
        for j in range(slots):
            i = row * per_row + np.uint64(j)
            acc = np.uint64(0)
            for f in range(per_slot):
                if i < n:
                    acc |= (np.uint64(values[i]) * scale) << (np.uint64(f) * width)
                i += stride
            out[row * stride + np.uint64(j)] = acc


@parallel_kernel
def _unpack(packed, per_slot, bits, slots, out):  # pragma: no cover - compiled
    n = np.uint64(out.size)
    width = np.uint64(bits)
    mask = (np.uint64(1) << width) - np.uint64(1)
    stride = np.uint64(slots)
    per_row = stride * np.uint64(per_slot)
    for r in prange(packed.size // slots):
        row = np.uint64(r)
        for j in range(slots):
            word = packed[row * stride + np.uint64(j)]
            i = row * per_row + np.uint64(j)
            for _ in range(per_slot):
                if i < n:
                    out[i] = word & mask
                word >>= width
                i += stride


# --- numpy references (test oracles) ----------------------------------------------------------
def pack_fields_reference(
    values: np.ndarray, *, rows: int, slots: int, per_slot: int, bits: int, scale: int = 1
) -> np.ndarray:
    """Numpy version of :func:`pack_fields`."""
    padded = np.zeros(rows * slots * per_slot, dtype=np.uint64)
    padded[: values.size] = values.astype(np.uint64) * np.uint64(scale)
    fields = padded.reshape(rows, per_slot, slots)
    out = np.zeros((rows, slots), dtype=np.uint64)
    for f in range(per_slot):
        out |= fields[:, f, :] << np.uint64(f * bits)
    return out


def unpack_fields_reference(
    packed: np.ndarray, *, length: int, per_slot: int, bits: int
) -> np.ndarray:
    """Numpy version of :func:`unpack_fields`."""
    mask = np.uint64((1 << bits) - 1)
    fields = [(packed >> np.uint64(f * bits)) & mask for f in range(per_slot)]
    return np.stack(fields, axis=1).reshape(-1)[:length]
