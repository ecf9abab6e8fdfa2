"""Wire protocol ids: the one place they are defined (the header's ``protocol`` field)."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ProtocolId"]


class ProtocolId(IntEnum):
    """Which protocol a message belongs to."""

    MODEL_BROADCAST = 0  # the engine's own "here is the global model" (and its evaluation)
    PLAIN = 1
    SECAGG = 2
    HE = 3
    HE_KEYS = 4  # the one-time key distribution of ``he``
