"""Narrow, typed exceptions. Every check in fedshield raises one of these.

A party whose message raises an :class:`InvalidMessage` (or a subclass) is treated as dropped for
the round; the honest parties' round goes on. :class:`ProtocolAbort` ends a round for everybody.
"""

from __future__ import annotations

__all__ = [
    "BadSignature",
    "ConfigError",
    "DataError",
    "FalseComplaint",
    "FedshieldError",
    "IllegalTransition",
    "InvalidCiphertext",
    "InvalidMessage",
    "InvalidShare",
    "MalformedMessage",
    "NonFiniteValues",
    "NotEnoughShares",
    "ProtocolAbort",
    "ReplayedMessage",
    "SecAggAbort",
    "StageError",
    "StageNotClosed",
    "UnknownSender",
    "WrongRound",
    "WrongShape",
]


class FedshieldError(Exception):
    """Base class of every error fedshield raises on purpose."""


class ConfigError(FedshieldError, ValueError):
    """An option or combination of options that cannot work; the message says what to change."""


class DataError(FedshieldError, ValueError):
    """A data file is missing or malformed; the message names the file and the problem."""


class InvalidMessage(FedshieldError):
    """A message from another party was rejected. Its sender counts as dropped for the round."""


class MalformedMessage(InvalidMessage):
    """Bad framing: wrong magic or version, truncated, oversized, bad lengths or dtypes."""


class WrongRound(InvalidMessage):
    """The message header names another round (a replay from an earlier round, or a stale one)."""


class UnknownSender(InvalidMessage):
    """The sender is not a participant of this round, or does not match the channel it came on."""


class ReplayedMessage(InvalidMessage):
    """A second message from the same sender in the same stage."""


class StageError(InvalidMessage):
    """The message belongs to another protocol or stage than the one in progress."""


class WrongShape(InvalidMessage):
    """An array field has the wrong dtype, shape or length for this session."""


class NonFiniteValues(InvalidMessage):
    """A float payload contains NaN or infinity."""


class BadSignature(InvalidMessage):
    """A signature does not verify under the claimed signer's identity key (a forged or swapped
    key, or a message altered on the way)."""


class FalseComplaint(InvalidMessage):
    """A client accused a neighbour whose shares were sound (or could not prove its
    accusation); the accuser, not the accused, is dropped."""


class ProtocolAbort(FedshieldError):
    """The round cannot complete (for example, too few survivors). Nothing is aggregated."""


class IllegalTransition(FedshieldError, RuntimeError):
    """A session was driven out of order (a stage skipped or repeated, or reused after its end)."""


class StageNotClosed(IllegalTransition):
    """A stage was opened (or the round revealed) before the previous stage was closed with
    ``close_stage``, or a stage was closed twice."""


class InvalidShare(InvalidMessage):
    """A secret share that is malformed, out of the field, or inconsistent with its siblings."""


class InvalidCiphertext(InvalidMessage):
    """A ciphertext (or sealed key) that is garbage, truncated, oversized, or made under other
    parameters: rejected before any arithmetic."""


class NotEnoughShares(ProtocolAbort):
    """Fewer shares than the threshold the shares themselves carry: nothing can be recovered."""


class SecAggAbort(ProtocolAbort):
    """SecAgg+ cannot complete: fewer survivors (or shares) than the threshold at some stage."""
