"""Trainers, sessions, the round runner and transports (imports torch and MONAI).

Names load on first use (PEP 562), so a light submodule such as the Flower relay
(:mod:`fedshield.engine.flower.apps`' ClientApp) does not pay for torch.
"""

from fedshield._lazy import lazy_names

_WHERE = {
    "DropoutPolicy": "dropout",
    "Compression": "compression",
    "UpdateCompressor": "compression",
    "Federation": "federation",
    "GlobalModel": "global_model",
    "RoundRecord": "server_round",
    "ServerRound": "server_round",
    "Site": "site",
    "SiteRuntime": "site",
    "make_site": "site",
    "EvaluationSummary": "evaluation",
    "SiteEvaluation": "evaluation",
    "pool_evaluations": "evaluation",
    "binary_metrics": "metrics",
    "predict": "metrics",
    "roc_auc": "metrics",
    "build_model": "models",
    "ParamEntry": "paramspec",
    "ParamSpec": "paramspec",
    "ProtocolOutcome": "runner",
    "StageStats": "runner",
    "setup_protocol": "runner",
    "run_protocol": "runner",
    "ALGORITHMS": "trainer",
    "Algorithm": "trainer",
    "LocalTrainer": "trainer",
    "InProcessTransport": "transport",
    "Reply": "transport",
    "Transport": "transport",
}

__all__, __getattr__, __dir__ = lazy_names(__name__, _WHERE)
