"""SEAL work on several cores. ``tenseal.sealapi`` holds the GIL for every call, so threads do
not help; forked processes do, and they inherit the parent's SEAL objects (contexts, keys) and
inputs without serialising them. Small results and errors travel back pickled over a pipe;
bulk results go into a :func:`shared_array` made before the fork.

Linux/macOS only (``fork``); a worker must not touch torch (its OpenMP pool does not survive
a fork) and does only SEAL work (numba's kernels run in the parent). A forked worker that
writes SEAL objects to bytes uses its own :class:`~fedshield.crypto.seal.SealIO`.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import multiprocessing
import os
import pickle
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import numpy as np

__all__ = [
    "ForkedObject",
    "LocalObject",
    "fork_map",
    "shared_array",
    "split_range",
    "worker_count",
]

T = TypeVar("T")
MAX_WORKERS = 8
_FORK = multiprocessing.get_context("fork")


def worker_count(requested: int | None, items: int, *, min_items: int = 32) -> int:
    """How many processes share ``items`` pieces of work: ``requested`` when given (at most
    ``items``), else one per available core with at least ``min_items`` pieces each. Inside a
    daemonic process (a ``multiprocessing.Pool`` worker, say), which may not have children,
    always 1."""
    daemonic = multiprocessing.current_process().daemon
    if requested is not None:
        if requested < 1:
            raise ValueError(f"workers must be at least 1, got {requested}")
        if requested > 1 and daemonic:
            raise ValueError(
                "this is a daemonic process (a multiprocessing.Pool worker?), which may not "
                "start workers: pass workers=1 or None"
            )
        return max(1, min(requested, items))
    if daemonic:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, MAX_WORKERS, items // min_items))


def shared_array(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A zeroed array in anonymous shared memory: what a child forked after this call writes
    into it, the parent sees (results come back without a copy through a pipe)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    buffer = mmap.mmap(-1, max(1, count * dtype.itemsize))  # MAP_SHARED | MAP_ANONYMOUS
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


def split_range(count: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous, near-equal ``(lo, hi)`` ranges covering ``range(count)``."""
    bounds = [count * i // parts for i in range(parts + 1)]
    return [(lo, hi) for lo, hi in itertools.pairwise(bounds) if hi > lo]


def fork_map(job: Callable[[int, int], T], count: int, workers: int) -> list[T]:
    """``[job(lo, hi) for (lo, hi) in split_range(count, workers)]``: the first range in this
    process, each other one in a forked child, all at once. An exception raised by ``job``
    (in any process) is raised here, the first range's first."""
    ranges = split_range(count, workers)
    children, done = [], False
    try:
        for lo, hi in ranges[1:]:
            receiver, sender = _FORK.Pipe(duplex=False)
            process = _FORK.Process(target=_run_part, args=(job, lo, hi, sender), daemon=True)
            process.start()
            sender.close()
            children.append((process, receiver))
        results = [job(*ranges[0])] if ranges else []
        for process, receiver in children:
            results.append(_unwrap(_receive(receiver, process)))
        done = True
        return results
    finally:
        for process, receiver in children:
            receiver.close()
            if not done:
                _stop(process)
        # On success the children are exiting on their own; the next fork reaps them.


class ForkedObject:
    """An object that lives in a forked child: ``factory()`` builds it there, ``send`` asks
    it to run a method, ``result`` waits for the answer (so several can work at once). When
    it stops, the child calls the object's ``close()`` if it has one."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._conn, child = _FORK.Pipe()
        self._process = _FORK.Process(target=_serve, args=(factory, child), daemon=True)
        self._process.start()
        child.close()

    def send(self, method: str, *args: Any) -> None:
        """Start ``method(*args)`` in the child."""
        try:
            self._conn.send((method, args))
        except OSError:
            _died(self._process)

    def result(self) -> Any:
        """The value of the last ``send``, or its exception raised here."""
        return _unwrap(_receive(self._conn, self._process))

    def call(self, method: str, *args: Any) -> Any:
        """``send`` then ``result``."""
        self.send(method, *args)
        return self.result()

    def close(self, *, wait: bool = True) -> None:
        """Stop the child (idempotent); ``wait=False`` lets it exit in the background (a
        large process takes a while to tear down; the next fork reaps it)."""
        if not self._conn.closed:
            with contextlib.suppress(OSError):
                self._conn.send(None)
            self._conn.close()
        if wait:
            _stop(self._process)


class LocalObject:
    """The same interface as :class:`ForkedObject` for an object built in this process."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.target = factory()
        self._outcome: tuple[bool, Any] = (True, None)

    def send(self, method: str, *args: Any) -> None:
        """Run ``method(*args)`` now; ``result`` gives its value or raises its error."""
        try:
            self._outcome = (True, getattr(self.target, method)(*args))
        except Exception as exc:
            self._outcome = (False, exc)

    def result(self) -> Any:
        """The value of the last ``send``, or its exception raised here."""
        return _unwrap(self._outcome)

    def call(self, method: str, *args: Any) -> Any:
        """``send`` then ``result``."""
        self.send(method, *args)
        return self.result()

    def close(self, *, wait: bool = True) -> None:
        """Call the object's ``close()`` if it has one."""
        _close_target(self.target)


# --- inside the children ----------------------------------------------------------------------
def _run_part(job: Callable[[int, int], Any], lo: int, hi: int, conn) -> None:
    try:
        outcome = (True, job(lo, hi))
    except BaseException as exc:  # every failure travels to the parent
        outcome = (False, exc)
    conn.send_bytes(_pickle(outcome))
    conn.close()


def _serve(factory: Callable[[], Any], conn) -> None:
    try:
        target = factory()
    except BaseException as exc:
        target, failure = None, exc
    else:
        failure = None
    while True:
        try:
            request = conn.recv()
        except EOFError:
            request = None
        if request is None:
            _close_target(target)
            return
        method, args = request
        try:
            if failure is not None:
                raise failure
            outcome = (True, getattr(target, method)(*args))
        except BaseException as exc:
            outcome = (False, exc)
        conn.send_bytes(_pickle(outcome))


def _close_target(target: Any) -> None:
    close = getattr(target, "close", None)
    if callable(close):
        close()


def _pickle(outcome: tuple[bool, Any]) -> bytes:
    try:
        return pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # an unpicklable result or exception
        return pickle.dumps((False, RuntimeError(f"{type(exc).__name__}: {exc}")))


# --- in the parent ----------------------------------------------------------------------------
def _receive(conn, process) -> tuple[bool, Any]:
    try:
        return pickle.loads(conn.recv_bytes())
    except (EOFError, OSError):
        _died(process)


def _died(process) -> NoReturn:
    process.join(timeout=5)
    raise RuntimeError(
        f"a forked HE worker died (exit code {process.exitcode}); "
        "is the machine out of memory? Pass workers=1 to run in one process"
    ) from None


def _unwrap(outcome: tuple[bool, Any]) -> Any:
    ok, value = outcome
    if not ok:
        raise value
    return value


def _stop(process) -> None:
    process.join(timeout=5)
    if process.is_alive():
        process.terminate()
        process.join()
