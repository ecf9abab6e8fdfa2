"""``fedshield bench overhead``: what each protection costs, beside its peers in the same run.

For each protection (``plain``, ``secagg``, ``he`` with shared or threshold keys, and the
peers: Flower 1.42's own SecAgg+ and the NVIDIA FLARE HE way) x update size (a model's state
dict) x sites: client and server seconds, bytes per site, round and critical-path seconds
(:mod:`.measure`, over the grid of :mod:`.grid`), and each protection's final AUC after a short
training (:mod:`.training`); outputs and ratios in :mod:`.report`. Benchmark code: it imports
the engine, and nothing imports it but the CLI and ``benchmarks/``.
"""

from fedshield.overhead.cli import add_overhead_command, run_overhead_bench

__all__ = ["add_overhead_command", "run_overhead_bench"]
