"""``he``'s one-time key setup as a transport runs it: the shared key's distribution
(:mod:`.keys`) or the threshold key's generation (:mod:`.threshold_keys`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from fedshield._validate import check_client_ids, check_instance, check_int
from fedshield.crypto.identity import Identity
from fedshield.errors import ConfigError
from fedshield.protocols.base import ClientSession, ServerSession
from fedshield.protocols.he.keys import HEKeySetupClient, HEKeySetupServer
from fedshield.protocols.he.params import HEPlan
from fedshield.protocols.he.threshold_keys import ThresholdKeySetupClient, ThresholdKeySetupServer
from fedshield.protocols.roster import Roster

__all__ = ["KEY_HOLDER", "KeySetup"]

KEY_HOLDER = 0  # shared keys: the site that makes the HE secret key


@dataclass(frozen=True)
class KeySetup:
    """``he``'s one-time key distribution for ``clients``: run :meth:`server` against one
    :meth:`client` per site (with its identity) over any transport, then :meth:`bind` each
    process's keyrings. The spec needs its roster (:meth:`ProtocolSpec.with_roster`)."""

    spec: Any  # the he protocol's spec (HESpec)
    plan: HEPlan
    clients: list[int]
    holder: int = KEY_HOLDER

    def __post_init__(self) -> None:
        if not hasattr(self.spec, "keyrings"):
            raise TypeError(f"spec must be the he protocol's spec, got {type(self.spec).__name__}")
        check_instance("plan", self.plan, HEPlan, "from plan_for")
        check_client_ids("clients", self.clients)
        clients = [int(c) for c in self.clients]
        object.__setattr__(self, "clients", clients)
        if check_int("holder", self.holder, low=0) not in clients:
            raise ValueError(f"holder must be one of clients {clients}, got {self.holder}")

    def server(self) -> ServerSession:
        """The server's session (it verifies every site's signed key or commitment)."""
        common = {"round": 0, "clients": self.clients, "dim": 1, "plan": self.plan}
        if self.plan.config.keys == "threshold":
            return ThresholdKeySetupServer(**common, roster=self._roster())
        return HEKeySetupServer(**common, holder=self.holder, roster=self._roster())

    def client(self, client_id: int, identity: Identity) -> ClientSession:
        """Site ``client_id``'s session, signing with its ``identity``."""
        common = {"client_id": client_id, "plan": self.plan, "roster": self._roster()}
        if self.plan.config.keys == "threshold":
            return ThresholdKeySetupClient(**common, identity=identity)
        return HEKeySetupClient(**common, holder=self.holder, identity=identity)

    def _roster(self) -> Roster:
        if self.spec.roster is None:
            raise ConfigError(
                "he: enrol the sites first (Roster.enrol or Roster.load, then "
                "spec.with_roster(roster)): the key is sealed only to roster members"
            )
        return self.spec.roster

    def bind(self, keyrings: dict) -> Any:
        """The protocol bound to the plan and the keyrings this process holds (none on the
        server)."""
        return replace(self.spec, plan=self.plan, keyrings=dict(keyrings))
