"""What a run's numbers depend on, recorded beside them in ``result.json``.

A run is bit-for-bit reproducible (metrics and final model) for the same configuration, seed,
library versions, torch thread count and machine, whether it is the first or a later run in a
process. torch's float results depend on its intra-op thread count (the order of reductions in
convolutions) and on the CPU's instruction set (oneDNN picks kernels per CPU), so the record
names both. numba's kernels are exact whatever their thread count (see
:mod:`fedshield.compress._parallel` for why they no longer change torch's).
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator
from importlib import metadata

import numba
import numpy as np
import torch

from fedshield import __version__
from fedshield.compress._parallel import threading_layer

__all__ = ["environment", "torch_threads"]


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


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[int]:
    """Run the block on ``threads`` torch threads (as ``fedshield run --threads`` does), then
    restore the process's setting. Yields the number in use. On a busy host torch's default of
    one thread per core stalls: one site's epoch measured 0.03-2.6 s on 2 threads beside other
    jobs, 0.035-0.09 s on one."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
