"""numba compression kernels on flat arrays (numpy, numba only). See the project's issues."""

__all__: list[str] = []
