"""Per-phase deadlines of a Flower run: how long the server waits for the sites in each phase.

Each deadline is measured from the start of its phase (before the requests go out). A site
that has not answered by then is a dropout for that phase: its late answer is never used (the
request's Flower TTL ends shortly after, so the SuperLink refuses the late reply too), and the
round goes on with the others when the protocol's threshold still holds.

Nothing can know how long a site's local training takes, so ``train`` is a setting: the
default suits the small models of the examples on a CPU; give a site with a large model or a
slow disk more. The phases:

- ``join``: the sites' SuperNodes connect and every site answers ``hello``;
- ``keys``: each message of the ``he`` key distribution (once per run);
- ``train``: a site receives the model, trains locally and opens its protocol session;
- ``stage``: each protocol stage (SecAgg+'s four, ``he``'s one, ``plain``'s one);
- ``evaluate``: a site evaluates the round's model on its test set;
- ``shutdown``: the sites acknowledge the end of the run.

This module imports nothing from Flower: the command line and the server's TOML configuration
use it too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from fedshield.errors import ConfigError

__all__ = ["PHASES", "Deadlines"]

PHASES = ("join", "keys", "train", "stage", "evaluate", "shutdown")
_SUFFIX = "-timeout"  # the Flower run-config key of a phase: ``train-timeout``, ...


@dataclass(frozen=True)
class Deadlines:
    """Seconds the server waits for the sites in each phase, from the phase's start.

    Example:
        >>> Deadlines.parse("train=300,stage=20").train
        300.0
        >>> Deadlines.from_mapping(Deadlines().as_run_config()) == Deadlines()
        True
    """

    join: float = 120.0
    keys: float = 60.0
    train: float = 120.0
    stage: float = 30.0
    evaluate: float = 60.0
    shutdown: float = 5.0

    def __post_init__(self) -> None:
        for phase in PHASES:
            value = getattr(self, phase)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(
                    f"deadline {phase!r}: {value!r} is not a number of seconds"
                )  # fmt: skip
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(
                    f"deadline {phase!r}: {value!r} s; give a positive, finite number of seconds"
                )
            object.__setattr__(self, phase, float(value))

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> Deadlines:
        """Deadlines from ``{phase: seconds}``; a phase may also be named by its run-config
        key (``train-timeout``). Phases not given keep their defaults.

        Raises:
            ConfigError: an unknown phase, a phase given twice, or a value that is not a
                positive finite number of seconds.
        """
        chosen: dict[str, object] = {}
        for key, value in values.items():
            phase = str(key).removesuffix(_SUFFIX)
            if phase not in PHASES:
                raise ConfigError(
                    f"unknown deadline {key!r}: the phases are {', '.join(PHASES)}"
                )  # fmt: skip
            if phase in chosen:
                raise ConfigError(f"deadline {phase!r} is given twice")
            chosen[phase] = value
        return cls(**chosen)

    @classmethod
    def parse(cls, text: str) -> Deadlines:
        """Deadlines from the command line's ``train=120,stage=30`` (seconds).

        Raises:
            ConfigError: an item that is not ``phase=seconds``, or as :meth:`from_mapping`.
        """
        values: dict[str, object] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            phase, equals, seconds = item.partition("=")
            try:
                if not equals:
                    raise ValueError
                value = float(seconds)
            except ValueError:
                raise ConfigError(
                    f"--deadline {item!r}: write phase=seconds, e.g. train=120,stage=30 "
                    f"(phases: {', '.join(PHASES)})"
                ) from None
            if phase.strip() in values:
                raise ConfigError(f"deadline {phase.strip()!r} is given twice")
            values[phase.strip()] = value
        return cls.from_mapping(values)

    def as_run_config(self) -> dict[str, float]:
        """The Flower run-config entries: ``{"train-timeout": 120.0, ...}``."""
        return {f"{phase}{_SUFFIX}": seconds for phase, seconds in asdict(self).items()}

    def describe(self) -> str:
        """``train=120,stage=30,...``: what :meth:`parse` reads back."""
        return ",".join(f"{f.name}={getattr(self, f.name):g}" for f in fields(self))
