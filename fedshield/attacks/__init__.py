"""Privacy attacks that show what each protection buys (``fedshield bench privacy``):
gradient inversion by an honest-but-curious server (:mod:`.inversion`; a multi-step update
through a simulation of the site's local steps, :mod:`.unrolled`) on what it sees of a real
round (:mod:`.observe`), and membership inference on the final model
(:mod:`.membership`). Attack code: it imports the engine, and nothing imports it but the CLI.
"""

from fedshield.attacks.inversion import InversionConfig, ObservedUpdate, Reconstruction, invert
from fedshield.attacks.membership import attack_aucs, per_example_loss
from fedshield.attacks.observe import ServerView, observe_round
from fedshield.attacks.scores import match, psnr, ssim, unrelated_level
from fedshield.attacks.unrolled import LocalWork, invert_unrolled, simulated_delta

__all__ = [
    "InversionConfig",
    "LocalWork",
    "ObservedUpdate",
    "Reconstruction",
    "ServerView",
    "attack_aucs",
    "invert",
    "invert_unrolled",
    "match",
    "observe_round",
    "per_example_loss",
    "psnr",
    "simulated_delta",
    "ssim",
    "unrelated_level",
]
