"""The forked workers that put SEAL on several cores: order, errors, and what they inherit."""

import multiprocessing
import os
from functools import partial

import numpy as np
import pytest

from fedshield.errors import InvalidCiphertext
from fedshield.protocols.he.forked import (
    ForkedObject,
    LocalObject,
    fork_map,
    split_range,
    worker_count,
)


def test_ranges_cover_everything_once_in_order():
    for count in (0, 1, 5, 64, 1000):
        for parts in (1, 2, 3, 8):
            ranges = split_range(count, parts)
            covered = [i for lo, hi in ranges for i in range(lo, hi)]
            assert covered == list(range(count)) and len(ranges) <= parts


def test_worker_count_honours_a_request_and_keeps_small_jobs_in_one_process():
    assert worker_count(3, 100) == 3 and worker_count(3, 2) == 2
    assert worker_count(None, 10) == 1  # fewer than 32 items per worker: not worth a fork
    with pytest.raises(ValueError, match="at least 1"):
        worker_count(0, 10)


def _count_in_a_daemon(conn):
    conn.send(worker_count(None, 10**6, min_items=1))
    try:
        worker_count(2, 10**6)
    except ValueError as exc:
        conn.send(str(exc))


def test_a_daemonic_process_keeps_the_work_to_itself():
    """multiprocessing forbids children to daemonic processes (Pool workers)."""
    fork = multiprocessing.get_context("fork")
    receiver, sender = fork.Pipe(duplex=False)
    process = fork.Process(target=_count_in_a_daemon, args=(sender,), daemon=True)
    process.start()
    assert receiver.recv() == 1 and "daemonic" in receiver.recv()
    process.join()


def test_fork_map_runs_parts_in_other_processes_and_keeps_their_order():
    data = np.arange(1000)  # inherited by the children, not sent to them

    def job(lo, hi):
        return os.getpid(), data[lo:hi].sum()

    parts = fork_map(job, 1000, 3)
    assert [s for _, s in parts] == [data[lo:hi].sum() for lo, hi in split_range(1000, 3)]
    pids = [pid for pid, _ in parts]
    assert pids[0] == os.getpid() and len(set(pids)) == 3


def test_fork_map_raises_a_childs_error_with_its_type():
    def job(lo, hi):
        if lo > 0:
            raise InvalidCiphertext(f"bad part {lo}")
        return lo

    with pytest.raises(InvalidCiphertext, match="bad part 5"):
        fork_map(job, 10, 2)


def test_a_forked_object_keeps_state_and_reports_errors_and_death():
    counter = ForkedObject(lambda: {"n": 0})
    try:
        counter.send("setdefault", "n", 0)
        assert counter.result() == 0
        assert counter.call("update", {"n": 5}) is None and counter.call("get", "n") == 5
        with pytest.raises(AttributeError):
            counter.call("no_such_method")
        assert counter.call("get", "n") == 5  # still serving after an error
        counter._process.kill()
        with pytest.raises(RuntimeError, match="died"):
            counter.call("get", "n")
    finally:
        counter.close()


class _Marker:
    def __init__(self, path):
        self.path = path

    def close(self):
        self.path.write_text(str(os.getpid()))


def test_a_stopped_object_is_closed_in_its_own_process(tmp_path):
    """What the object holds (a SEAL tmpfs file, say) is released where it was made."""
    forked = ForkedObject(partial(_Marker, tmp_path / "forked"))
    forked.close()
    assert int((tmp_path / "forked").read_text()) != os.getpid()
    local = LocalObject(partial(_Marker, tmp_path / "local"))
    assert local.call("close") is None and int((tmp_path / "local").read_text()) == os.getpid()
