"""Names of a package that load their submodule on first use (PEP 562).

Private: ``fedshield.engine`` and ``fedshield.protocols`` use it so that a light submodule (the
Flower relay, ``plain``) does not pay for torch or TenSEAL.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from importlib import import_module


def lazy_names(
    package: str, where: Mapping[str, str]
) -> tuple[list[str], Callable[[str], object], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package``, whose public name ``n`` lives in
    its submodule ``where[n]``."""
    names = sorted(where)

    def __getattr__(name: str) -> object:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return names

    return names, __getattr__, __dir__
