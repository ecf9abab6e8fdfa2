"""Simulated dropouts: a probability per client and stage, or an explicit schedule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["DropoutPolicy"]


class DropoutPolicy:
    """Decides which clients vanish at which protocol stage.

    Args:
        probability: chance that a client still alive drops at each stage (seeded, reproducible).
        schedule: ``{stage: [client ids]}``; those clients drop at that stage in every round.
        seed: seed of the simulated randomness (not a secret; only simulation uses it).
    """

    def __init__(
        self,
        *,
        probability: float = 0.0,
        schedule: Mapping[str, Sequence[int]] | None = None,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= probability < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {probability}")
        self.probability = probability
        self.schedule = {str(k): frozenset(int(c) for c in v) for k, v in (schedule or {}).items()}
        self.seed = seed

    def drops(self, round: int, stage: str, client: int) -> bool:
        """Whether ``client`` is gone at ``stage`` of ``round``."""
        if client in self.schedule.get(stage, ()):
            return True
        if self.probability == 0.0:
            return False
        stage_key = sum(stage.encode())
        rng = np.random.default_rng([self.seed, round, stage_key, client])
        return bool(rng.random() < self.probability)

    def as_dict(self) -> dict:
        """The policy as plain data (for ``result.json``)."""
        return {
            "probability": self.probability,
            "schedule": {k: sorted(v) for k, v in self.schedule.items()},
        }
