"""Flower 1.42's own SecAgg+, in one process: now :mod:`fedshield.overhead.flower_peer` (the
peer ``fedshield bench overhead`` runs); kept here for the scripts that import it."""

from __future__ import annotations

from fedshield.overhead.flower_peer import run_flower_secaggplus

__all__ = ["run_flower_secaggplus"]
