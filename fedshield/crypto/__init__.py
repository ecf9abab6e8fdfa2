"""Cryptographic building blocks and protected protocols (numpy, numba, cryptography, tenseal).

Never imports torch. The SecAgg+ and HE protocols land here (see the project's issues).
"""

__all__: list[str] = []
