"""Slot packing: several quantized values per BFV slot at fixed bit offsets."""

from __future__ import annotations

import numpy as np

from fedshield.compress import fields
from fedshield.protocols.he.params import HEPlan

__all__ = ["pack_slots", "place_values", "unpack_slots"]


# --- packing ----------------------------------------------------------------------------------
def pack_slots(values: np.ndarray, plan: HEPlan, *, scale: int = 1) -> np.ndarray:
    """``(n_ciphertexts, slots)`` uint64 of ``values * scale``: value ``i`` goes to ciphertext
    ``i // (slots·m)``, slot ``j % slots`` and field ``j // slots`` (``j`` its index within the
    ciphertext)."""
    return fields.pack_fields(
        values,
        rows=plan.n_ciphertexts,
        slots=plan.slots,
        per_slot=plan.per_slot,
        bits=plan.value_bits,
        scale=scale,
    )


def unpack_slots(slots: np.ndarray, plan: HEPlan, length: int) -> np.ndarray:
    """Inverse of :func:`pack_slots` for the first ``length`` values."""
    return fields.unpack_fields(slots, length=length, per_slot=plan.per_slot, bits=plan.value_bits)


def place_values(rows: np.ndarray, start: int, values: np.ndarray, plan: HEPlan) -> None:
    """Put more values at positions ``start, start + 1, ...`` of packed ``rows`` (their
    fields are empty)."""
    index = start + np.arange(len(values))
    row, k = np.divmod(index, plan.slots * plan.per_slot)
    field, slot = np.divmod(k, plan.slots)
    shifted = values.astype(np.uint64) << (field * plan.value_bits).astype(np.uint64)
    np.bitwise_or.at(rows, (row, slot), shifted)
