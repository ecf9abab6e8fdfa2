"""Same configuration and seed, same bits: whether a run is the first in its process or not.

Before the fix, numba's OpenMP threading layer turned torch's thread count from 1 to 2 at the
first kernel launch: the first run of a process trained round 1 on one thread and later runs
on two, so the final models differed (seen here for every quantizing configuration).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from fedshield.engine.experiment import RunConfig, build_federation

SMALL = dict(dataset="synthetic", sites=3, rounds=2, local_epochs=1, seed=3)
CONFIGS = {
    "plain-fp32": dict(protect="plain"),
    "plain-8bit-ef": dict(protect="plain", quant_bits=8, error_feedback=True),
    "secagg": dict(protect="secagg"),
    "he": dict(protect="he"),
}


def _in_process_sha(**options) -> str:
    config = RunConfig(**{**SMALL, **options})
    fed = build_federation(config)
    records = [fed.run_round() for _ in range(config.rounds)]
    return records[-1].model_sha256


def _fresh_process_result(tmp_path, **options) -> dict:
    args = [f"--{key.replace('_', '-')}={value}" for key, value in {**SMALL, **options}.items()]
    args = [a.removesuffix("=True") for a in args]  # store_true flags
    out = tmp_path / "run"
    subprocess.run(
        [sys.executable, "-m", "fedshield.cli", "run", *args, "--threads=1", f"--out={out}"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return json.loads((out / "result.json").read_text())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_seed_gives_the_same_final_model_in_this_process_and_a_fresh_one(tmp_path, name):
    assert torch.get_num_threads() == 1  # tests/conftest.py; the CLI below gets --threads=1
    first = _in_process_sha(**CONFIGS[name])
    again = _in_process_sha(**CONFIGS[name])
    fresh = _fresh_process_result(tmp_path, **CONFIGS[name])
    assert first == again
    assert fresh["reproducibility"]["final_model_sha256"] == first
    assert fresh["reproducibility"]["torch_threads"] == 1


def test_result_json_names_what_reproducing_it_depends_on(tmp_path):
    env = _fresh_process_result(tmp_path, protect="plain")["reproducibility"]
    assert {"torch", "numpy", "numba", "torch_threads", "numba_threading_layer"} <= set(env)
    assert env["torch"] == torch.__version__ and env["numba_threading_layer"] == "workqueue"
    assert len(env["final_model_sha256"]) == 64


def test_a_different_seed_gives_a_different_model():
    assert _in_process_sha(protect="plain") != _in_process_sha(protect="plain", seed=4)
