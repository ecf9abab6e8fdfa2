"""The in-process run of a deployment's config, for the tests that compare a Flower run with
it: in a fresh interpreter with one torch thread, like the sites' processes (a test worker has
run other tests first; the comparison is clean-to-clean)."""

from __future__ import annotations

import json
import subprocess
import sys

from fedshield.engine.experiment import RunConfig

_SCRIPT = """
import json, sys, torch
from fedshield.engine.experiment import RunConfig, build_federation
torch.set_num_threads(1)  # as the site processes
fed = build_federation(RunConfig(**json.loads(sys.argv[1])))
print(json.dumps([fed.run_round().as_dict() for _ in range({rounds})], default=str))
"""


def in_process(config: RunConfig) -> list[dict]:
    """The round records of ``config`` on the in-process transport."""
    config = RunConfig(**{**config.as_dict(), "transport": "inprocess"})
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(rounds=config.rounds),
         json.dumps(config.as_dict())],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])
