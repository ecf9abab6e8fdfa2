"""Trainers, sessions, the round runner and transports (imports torch and MONAI)."""

from fedshield.engine.dropout import DropoutPolicy
from fedshield.engine.encoding import Encoding, UpdateEncoder
from fedshield.engine.federation import Federation, RoundRecord, Site, make_site
from fedshield.engine.metrics import binary_metrics, predict, roc_auc
from fedshield.engine.models import build_model
from fedshield.engine.paramspec import ParamEntry, ParamSpec
from fedshield.engine.protocols import PROTOCOLS, ProtocolPair, get_protocol
from fedshield.engine.runner import ProtocolOutcome, StageStats, run_protocol
from fedshield.engine.trainer import ALGORITHMS, Algorithm, LocalTrainer
from fedshield.engine.transport import InProcessTransport, Reply, Transport

__all__ = [
    "ALGORITHMS",
    "PROTOCOLS",
    "Algorithm",
    "DropoutPolicy",
    "Encoding",
    "Federation",
    "InProcessTransport",
    "LocalTrainer",
    "ParamEntry",
    "ParamSpec",
    "ProtocolOutcome",
    "ProtocolPair",
    "Reply",
    "RoundRecord",
    "Site",
    "StageStats",
    "Transport",
    "UpdateEncoder",
    "binary_metrics",
    "build_model",
    "get_protocol",
    "make_site",
    "predict",
    "roc_auc",
    "run_protocol",
]
