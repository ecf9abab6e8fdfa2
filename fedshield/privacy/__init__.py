"""Differential privacy: site-level DP-FedAvg (McMahan et al., "Learning Differentially Private
Recurrent Language Models", ICLR 2018): each site's update is clipped to L2 norm ``C`` and
Gaussian noise of standard deviation ``sigma * C`` is added, by the server to the aggregate it
learns (``central``) or by each site to its own update (``local``). Accounting goes through
Google's ``dp-accounting`` (:mod:`fedshield.privacy.accounting`); noise comes from generators
seeded by the operating system's CSPRNG, never from the run seed
(:mod:`fedshield.privacy.mechanisms`). Torch-free.
"""

from fedshield.privacy.accounting import calibrate_noise, dp_event, epsilon
from fedshield.privacy.mechanisms import (
    DPConfig,
    SiteLevelDP,
    clip_l2,
    gaussian_noise,
    spent_record,
)

__all__ = [
    "DPConfig",
    "SiteLevelDP",
    "calibrate_noise",
    "clip_l2",
    "dp_event",
    "epsilon",
    "gaussian_noise",
    "spent_record",
]
