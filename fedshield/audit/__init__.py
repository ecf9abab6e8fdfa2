"""``fedshield audit``: the protocols' claims checked against the installed package.

Named checks (:mod:`fedshield.audit.checks`, :mod:`fedshield.audit.rejection`) drive the real
sessions of every mode (:mod:`fedshield.audit.bed`) and pass or fail with what they saw; a
fuzzer (:mod:`fedshield.audit.fuzz`) feeds mutated messages into every session type. Both take
an :class:`AuditBed`, whose ``variants`` put another session class in place of the registry's:
that is how the tests show that a broken protocol fails the audit.

Example:
    >>> from fedshield.audit import AuditBed, run_checks, select
    >>> [r.passed for r in run_checks(AuditBed(), select(["exact/plain"]), quick=True)]
    [True]
"""

from fedshield.audit import counts as _counts  # noqa: F401  (registers the count sessions')
from fedshield.audit import rejection as _rejection  # noqa: F401  (registers reject/*)
from fedshield.audit.bed import MODES, SESSION_TYPES, AuditBed, AuditRound, drive
from fedshield.audit.checks import (
    CHECKS,
    Check,
    CheckFailed,
    CheckResult,
    register,
    run_checks,
    select,
)
from fedshield.audit.fuzz import FuzzCounts, FuzzReport, fuzz
from fedshield.audit.keywalk import reachable_secrets

__all__ = [
    "CHECKS",
    "MODES",
    "SESSION_TYPES",
    "AuditBed",
    "AuditRound",
    "Check",
    "CheckFailed",
    "CheckResult",
    "FuzzCounts",
    "FuzzReport",
    "drive",
    "fuzz",
    "reachable_secrets",
    "register",
    "run_checks",
    "select",
]
