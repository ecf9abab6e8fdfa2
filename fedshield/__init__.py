"""fedshield: protected, compressed aggregation for federated learning on medical images."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fedshield")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
