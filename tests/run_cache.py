"""Training runs for the accuracy tests: each in a fresh process, each once, cached on disk.

A run is ``fedshield run ... --threads 1`` in a subprocess, so nothing a test did before can
touch its numbers, and its ``result.json`` is kept under a key made of the options, the
fedshield sources, the library versions, the CPU capability and the data file. Tests that need
the same run share it, across pytest-xdist workers (a file lock makes the others wait instead
of training twice) and across ``make test`` and ``make acceptance`` within one CI job. Edit
any fedshield source and every key changes. ``FEDSHIELD_RUN_CACHE`` moves the cache
(default ``runs/test-cache``).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("FEDSHIELD_RUN_CACHE", ROOT / "runs" / "test-cache"))


@functools.cache
def _fingerprint() -> str:
    """Everything a run's numbers depend on besides its options: the fedshield sources, the
    library versions, the CPU capability torch uses and the data file."""
    import numba
    import tenseal
    import torch

    from fedshield.data import breastmnist_path
    from fedshield.errors import DataError

    versions = (sys.version, torch.__version__, numba.__version__, np.__version__,
                tenseal.__version__, torch.backends.cpu.get_cpu_capability())  # fmt: skip
    digest = hashlib.sha256(repr(versions).encode())
    for path in sorted((ROOT / "fedshield").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    try:
        digest.update(Path(breastmnist_path()).read_bytes())
    except DataError:
        digest.update(b"no breastmnist")
    return digest.hexdigest()


def _cli_args(options: dict) -> list[str]:
    args = []
    for key, value in sorted(options.items()):
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not False and value is not None:
            args.append(f"{flag}={value}")
    return args


def cached_run(command: str = "run", **options) -> dict:
    """The result document of ``fedshield <command> --threads 1 <options>`` (``run``:
    ``result.json``; ``experiment survey``: ``survey.json``), trained at most once."""
    args = _cli_args(options) + (["--threads=1"] if command == "run" else [])
    key = hashlib.sha256(json.dumps([command, args, _fingerprint()]).encode())
    folder = CACHE / key.hexdigest()[:24]
    result = folder / ("result.json" if command == "run" else "survey.json")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(folder.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be training this run now
        if not result.exists():
            _train(command.split() + args + [f"--out={folder}"], folder)
    return json.loads(result.read_text())


def _train(argv: list[str], folder: Path) -> None:
    """Train into a fresh folder, then move it in place: a killed run leaves no half result."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    partial = folder.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    argv = [*argv[:-1], f"--out={partial}"]  # the last argument names the output folder
    done = subprocess.run(
        [sys.executable, "-m", "fedshield.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"fedshield {' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
    (partial / "command.txt").write_text("fedshield " + " ".join(argv) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def final_auc(**options) -> float:
    """Final pooled test AUC of a cached BreastMNIST-style run."""
    return cached_run(**options)["final"]["auc"]


def mean_upload(**options) -> float:
    """Mean bytes up per client per round of a cached run."""
    return float(np.mean([r["bytes_up_per_client"] for r in cached_run(**options)["rounds"]]))


def has_breastmnist() -> bool:
    """Whether ``breastmnist.npz`` is where fedshield looks (the accuracy tests skip without)."""
    from fedshield.data import breastmnist_path
    from fedshield.errors import DataError

    try:
        breastmnist_path()
    except DataError:
        return False
    return True
