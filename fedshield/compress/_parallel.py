"""How fedshield's parallel kernels are compiled and launched: one place for numba's options.

**Why not numba's default threading layer.** numba prefers TBB, then OpenMP. TBB's pip wheel
installs its library where numba cannot load it from a virtual environment, so numba takes
OpenMP, and its OpenMP layer calls ``omp_set_num_threads`` on the OpenMP runtime that torch
shares. Measured on torch 2.13 / numba 0.68: after ``torch.set_num_threads(1)``, the first
parallel kernel launch turned ``torch.get_num_threads()`` into 2, so a training run gave
different float results depending on whether a kernel had run earlier in the process (the
reproducibility issue). The ``workqueue`` layer has its own pool and leaves OpenMP alone.

``workqueue`` refuses concurrent launches (it aborts the process), so every launch holds one
process-wide lock; the kernels are memory-bound, and the GIL serialises their callers anyway.
Set ``NUMBA_THREADING_LAYER`` yourself to choose another layer (``omp`` brings the dependence
back). **Embedding:** importing :mod:`fedshield.compress` selects the layer for the whole
process; your own numba ``parallel=True`` code launched from several threads at once would then
abort (it does not take our lock): choose ``tbb`` or ``omp`` for such a process. Kernel results
never depend on the layer or the thread count (counter-based randomness, serial reductions).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any

import numba
from numba import njit

__all__ = ["THREADING_LAYER", "parallel_kernel", "threading_layer"]

THREADING_LAYER = os.environ.get("NUMBA_THREADING_LAYER", "workqueue")
numba.config.THREADING_LAYER = THREADING_LAYER

_launch_lock = threading.Lock()


def _new_lock_in_child() -> None:
    global _launch_lock
    _launch_lock = threading.Lock()  # a lock held by another thread at fork is never released


os.register_at_fork(after_in_child=_new_lock_in_child)


def parallel_kernel(function: Callable[..., Any]) -> Callable[..., Any]:
    """``@njit(cache=True, parallel=True)`` whose launches hold the process-wide lock.

    No ``fastmath``: every client must compute the same bits. The compiled dispatcher stays
    reachable as ``.compiled``.
    """
    compiled = njit(cache=True, parallel=True)(function)

    @functools.wraps(function)
    def launch(*args):
        with _launch_lock:
            return compiled(*args)

    launch.compiled = compiled
    return launch


def threading_layer() -> str:
    """The layer numba uses in this process (the configured one before the first launch)."""
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return THREADING_LAYER
