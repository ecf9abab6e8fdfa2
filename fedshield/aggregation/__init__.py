"""Server rules on plaintext or unmasked aggregates (numpy only)."""

from fedshield.aggregation.fedavg import weighted_mean
from fedshield.aggregation.server_opt import (
    SERVER_OPTIMIZERS,
    FedAdagrad,
    FedAdam,
    FedYogi,
    ServerOptimizer,
    build,
)

__all__ = [
    "SERVER_OPTIMIZERS",
    "FedAdagrad",
    "FedAdam",
    "FedYogi",
    "ServerOptimizer",
    "build",
    "weighted_mean",
]
