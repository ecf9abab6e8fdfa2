"""How kernels launch: they leave torch's threads alone and survive concurrent callers.

Each check runs in a fresh interpreter: numba picks its threading layer once per process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
from numba import prange

from fedshield.compress import quantize_fixed
from fedshield.compress._parallel import parallel_kernel, threading_layer


def _run(code: str, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"} | env
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )


def test_a_kernel_launch_leaves_torchs_thread_count_alone():
    # Under numba's OpenMP layer this printed "1 2": the launch reset the shared OpenMP runtime.
    done = _run(
        """
        import numpy as np, torch
        torch.set_num_threads(1)
        from fedshield.compress import quantize_fixed
        quantize_fixed(np.ones(1 << 20, np.float32), clip=0.1, bits=8, seed=1)
        print(torch.get_num_threads(), __import__("numba").threading_layer())
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "workqueue"]


def test_concurrent_launches_from_threads_complete():
    # workqueue aborts the process on a concurrent launch; the launch lock prevents that.
    done = _run(
        """
        import threading, numpy as np
        from fedshield.compress import quantize_fixed
        x = np.random.default_rng(0).normal(size=1 << 20).astype(np.float32)
        expected = [quantize_fixed(x, clip=0.1, bits=8, seed=s) for s in range(4)]
        bad = []
        def work(s):
            for _ in range(20):
                if not np.array_equal(quantize_fixed(x, clip=0.1, bits=8, seed=s), expected[s]):
                    bad.append(s)
        threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
        [t.start() for t in threads]; [t.join() for t in threads]
        print("bad", len(bad))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["bad", "0"]


def test_the_user_can_choose_the_layer():
    done = _run(
        "from fedshield.compress._parallel import threading_layer; print(threading_layer())",
        NUMBA_THREADING_LAYER="omp",
    )
    assert done.stdout.strip() == "omp", done.stderr


def test_a_parallel_kernel_keeps_its_compiled_dispatcher():
    @parallel_kernel
    def double(x, out):  # pragma: no cover - compiled
        for i in prange(x.size):
            out[i] = 2 * x[i]

    out = np.empty(3, np.float32)
    double(np.arange(3, dtype=np.float32), out)
    assert out.tolist() == [0, 2, 4] and hasattr(double, "compiled")
    quantize_fixed(np.zeros(8, np.float32), clip=1.0, bits=4, seed=0)
    assert threading_layer() in ("workqueue", os.environ.get("NUMBA_THREADING_LAYER"))
