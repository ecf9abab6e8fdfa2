"""Roster and identity keys for protocol tests: one enrolment per set of site ids, reused
(identities are long-term, like a real federation's)."""

from functools import cache

from fedshield.protocols.roster import Roster


@cache
def _enrol(ids: tuple[int, ...], min_sites: int):
    return Roster.enrol(ids, min_sites=min_sites)


def enrol(clients, min_sites: int = 1):
    """``(roster, identities)`` for ``clients`` (ids, or a count)."""
    ids = tuple(range(clients)) if isinstance(clients, int) else tuple(sorted(clients))
    return _enrol(ids, min_sites)


def signed(clients, min_sites: int = 1) -> dict:
    """The server's keyword arguments: ``{"roster": ...}``."""
    return {"roster": enrol(clients, min_sites)[0]}


def signing(client: int, clients, min_sites: int = 1) -> dict:
    """A client's keyword arguments: ``{"roster": ..., "identity": ...}``."""
    roster, identities = enrol(clients, min_sites)
    return {"roster": roster, "identity": identities[client]}


ROSTER, IDENTITIES = enrol(16)  # sites 0..15: every protocol test's ids


def signing_as(client: int) -> dict:
    """A client's keyword arguments on :data:`ROSTER`."""
    return {"roster": ROSTER, "identity": IDENTITIES[client]}
