import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_embed_backend_example_runs_and_aggregates_correctly():
    module = runpy.run_path(str(ROOT / "examples" / "embed_backend.py"))
    mean = module["main"](n_clients=4, dim=7)
    assert mean.shape == (7,) and np.isfinite(mean).all()


def test_embed_backend_example_is_short_and_runs_as_a_script():
    path = ROOT / "examples" / "embed_backend.py"
    assert len(path.read_text().splitlines()) <= 60
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, check=True)
    assert "aggregated 3 clients" in out.stdout
