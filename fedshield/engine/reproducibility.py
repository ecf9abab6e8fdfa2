"""What a run's numbers depend on, recorded beside them in ``result.json``.

A run is bit-for-bit reproducible (metrics and final model) for the same configuration, seed,
library versions, torch thread count and machine, whether it is the first or a later run in a
process. torch's float results depend on its intra-op thread count (the order of reductions in
convolutions) and on the CPU's instruction set (oneDNN picks kernels per CPU), so the record
names both. numba's kernels are exact whatever their thread count (see
:mod:`fedshield.compress._parallel` for why they no longer change torch's).
"""

from __future__ import annotations

import platform
from importlib import metadata

import numba
import numpy as np
import torch

from fedshield import __version__
from fedshield.compress._parallel import threading_layer

__all__ = ["environment"]


def environment() -> dict:
    """Versions, thread counts and machine of this process, as plain data."""
    return {
        "fedshield": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "numba": numba.__version__,
        "tenseal": _version("tenseal"),
        "torch_threads": torch.get_num_threads(),
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": threading_layer(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
