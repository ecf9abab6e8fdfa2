"""Cryptographic primitives only (numpy, numba, cryptography, tenseal), like pyca's
``hazmat/primitives``: Shamir sharing, the mask PRG, key agreement and share sealing, ring
quantization, SEAL contexts and byte I/O.

Building blocks: use the protocols in :mod:`fedshield.protocols` unless you know why not.
Never imports torch, nor any protocol.
"""

__all__: list[str] = []
