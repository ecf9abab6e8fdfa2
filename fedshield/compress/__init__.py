"""numba compression kernels on flat arrays (numpy, numba only).

Each kernel has a numpy reference (``*_reference``) that the tests use as the oracle and the
benchmarks as a baseline.
"""

from fedshield.compress.bitpack import pack, pack_into, packed_size, unpack
from fedshield.compress.counter_rng import derive_seed
from fedshield.compress.feedback import ErrorFeedback
from fedshield.compress.quantize import (
    dequantize_chunked,
    dequantize_fixed,
    quantize_chunked,
    quantize_fixed,
)
from fedshield.compress.sparsify import k_for, randk, topk_exact, topk_sampled

__all__ = [
    "ErrorFeedback",
    "dequantize_chunked",
    "dequantize_fixed",
    "derive_seed",
    "k_for",
    "pack",
    "pack_into",
    "packed_size",
    "quantize_chunked",
    "quantize_fixed",
    "randk",
    "topk_exact",
    "topk_sampled",
    "unpack",
]
