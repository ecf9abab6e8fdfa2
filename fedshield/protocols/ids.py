"""Wire protocol ids: the one place they are defined (the header's ``protocol`` field).

Each protocol names its stages with a :class:`StrEnum` next to its sessions (``SecAggStage``,
``HEStage``, ``HEKeyStage``, ``PlainStage``); on the wire a stage travels as its 1-based
position in the session's ``stages``.
"""

from __future__ import annotations

import sys
from enum import Enum, IntEnum

__all__ = ["ProtocolId", "StrEnum"]

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10

    class StrEnum(str, Enum):
        """``enum.StrEnum`` of Python 3.11: members are their string values."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return format(str(self.value), spec)


class ProtocolId(IntEnum):
    """Which protocol a message belongs to."""

    MODEL_BROADCAST = 0  # the engine's own "here is the global model" (and its evaluation)
    PLAIN = 1
    SECAGG = 2
    HE = 3
    HE_KEYS = 4  # the one-time key distribution of ``he``
    HE_THRESHOLD = 5  # ``he`` with threshold keys: no site decrypts alone
    HE_THRESHOLD_KEYS = 6  # its one-time collective key generation
