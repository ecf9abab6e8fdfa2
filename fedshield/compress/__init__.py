"""numba compression kernels on flat arrays (numpy, numba only)."""

from fedshield.compress.bitpack import pack, packed_size, unpack

__all__ = ["pack", "packed_size", "unpack"]
