"""The federation's roster: who may take part, under which identity keys, and what every site
pinned at enrolment.

A roster lists each site's id and Ed25519 identity public key
(:class:`~fedshield.crypto.identity.Identity`), the fewest sites a round may have, and the
public protocol parameters. Every site holds the same roster (its :attr:`Roster.digest` is
bound into every signature, so sites holding different rosters never accept each other), and
refuses a stage whose participants are not on it, are too few, or whose keys are not signed by
their site. So a server cannot add members of its own, swap a site's key, or shrink a round.

The in-process engine enrols its sites itself (:meth:`Roster.enrol`); a deployment makes the
roster and one identity key per site once (``fedshield roster enrol``), hands each hospital its
key and everyone the roster file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fedshield._validate import check_client_ids, check_int
from fedshield.crypto.identity import Identity, check_identity_key, fingerprint, verify
from fedshield.errors import ConfigError, UnknownSender

__all__ = ["Roster"]

_FORMAT = "fedshield-roster/1"


@dataclass(frozen=True)
class Roster:
    """Sites, their identity keys, the smallest round and the pinned public parameters.

    Args:
        members: site id -> 32-byte Ed25519 identity public key (distinct keys).
        min_sites: the fewest sites a round may list (and the fewest survivors a stage may
            keep), at least 1 and at most the number of members.
        parameters: public protocol parameters pinned at enrolment (JSON values: the
            protection, its quantization bits, ...); sites compare them with their own.

    Raises:
        ConfigError: an invalid member, a repeated key, ``min_sites`` out of range, or
            parameters that are not JSON.
    """

    members: Mapping[int, bytes]
    min_sites: int
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.members, Mapping):
            raise TypeError(f"members must be a mapping, got {type(self.members).__name__}")
        try:
            ids = check_client_ids("roster members", self.members)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        keys = {i: check_identity_key(self.members[i]) for i in ids}
        if len(set(keys.values())) != len(keys):
            raise ConfigError("two roster members share an identity key")
        check_int("min_sites", self.min_sites, low=1, high=len(ids), error=ConfigError)
        try:
            json.dumps(dict(self.parameters), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"roster parameters must be JSON values: {exc}") from None
        object.__setattr__(self, "members", MappingProxyType(keys))
        object.__setattr__(self, "parameters", MappingProxyType(dict(self.parameters)))

    @classmethod
    def enrol(
        cls, sites: Iterable[int], *, min_sites: int, parameters: Mapping[str, Any] | None = None
    ) -> tuple[Roster, dict[int, Identity]]:
        """A fresh identity per site and the roster listing them (what a deployment does once,
        and the in-process engine at every start)."""
        identities = {int(s): Identity.generate() for s in sites}
        members = {s: identity.public_bytes for s, identity in identities.items()}
        return cls(members, min_sites, parameters or {}), identities

    @property
    def sites(self) -> tuple[int, ...]:
        """The members' ids, sorted."""
        return tuple(self.members)

    @cached_property
    def digest(self) -> bytes:
        """SHA-256 of the roster's canonical JSON: bound into every signature."""
        return hashlib.sha256(self.to_json().encode()).digest()

    def key(self, site: int) -> bytes:
        """``site``'s identity public key.

        Raises:
            UnknownSender: ``site`` is not on the roster.
        """
        try:
            return self.members[site]
        except KeyError:
            raise UnknownSender(f"site {site} is not on the federation's roster") from None

    def verify(self, site: int, signature: bytes, label: bytes, message: bytes) -> None:
        """Check that ``site`` signed ``message`` for ``label`` (under this roster).

        Raises:
            UnknownSender: ``site`` is not on the roster.
            BadSignature: the signature does not verify.
        """
        verify(self.key(site), signature, label, self.digest + message, who=f"site {site}")

    def sign(self, identity: Identity, label: bytes, message: bytes) -> bytes:
        """``identity``'s signature of ``message`` for ``label`` under this roster (what
        :meth:`verify` checks)."""
        return identity.sign(label, self.digest + message)

    def check_identity(self, site: int, public: bytes, *, source: str = "the identity key") -> None:
        """Raise :class:`ConfigError` unless ``public`` is ``site``'s identity key here,
        saying whose it is instead (``source`` names the key's file)."""
        if site not in self.members:
            members = ", ".join(map(str, self.sites))
            raise ConfigError(f"site {site} is not on the roster (members: {members})")
        if self.members[site] == public:
            return
        owner = [s for s, key in self.members.items() if key == public]
        mine = f"fingerprint {fingerprint(public)}, site {site}'s is {fingerprint(self.key(site))}"
        if owner:
            raise ConfigError(f"{source} is site {owner[0]}'s identity key, not site {site}'s "
                              f"({mine}): use site {site}'s own identity file")  # fmt: skip
        raise ConfigError(f"{source} is not the identity key of any site on this roster ({mine}): "
                          "use the identity file enrolled with this roster")  # fmt: skip

    def check_parameters(self, parameters: Mapping[str, Any]) -> None:
        """Raise :class:`ConfigError` naming each pinned parameter that ``parameters`` (a
        site's own) contradict; parameters the roster does not pin are free."""
        wrong = {
            k: (v, parameters.get(k))
            for k, v in self.parameters.items()
            if k in parameters and parameters[k] != v
        }
        if wrong:
            listed = ", ".join(f"{k}: roster {a!r}, this site {b!r}" for k, (a, b) in wrong.items())
            raise ConfigError(f"this site's parameters differ from the roster's ({listed})")

    def to_json(self) -> str:
        """The roster as canonical JSON (sorted keys, hex keys)."""
        return json.dumps(
            {
                "format": _FORMAT,
                "members": {str(s): k.hex() for s, k in self.members.items()},
                "min_sites": self.min_sites,
                "parameters": dict(self.parameters),
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str, *, source: str = "the roster") -> Roster:
        """Parse :meth:`to_json`'s output.

        Raises:
            ConfigError: not a fedshield roster, or an invalid one (``source`` names it).
        """
        try:
            data = json.loads(text, object_pairs_hook=_no_repeated_keys)
            if data.get("format") != _FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {_FORMAT!r}")
            members = {_site_id(s): bytes.fromhex(k) for s, k in data["members"].items()}
            return cls(members, data["min_sites"], data.get("parameters", {}))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"{source} is not a valid fedshield roster: {exc}") from None

    def save(self, path: str | Path) -> None:
        """Write the roster (public: no secret in it)."""
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Roster:
        """Read a roster file.

        Raises:
            ConfigError: missing, unreadable or invalid (the message names the file).
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the roster {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path} is not a fedshield roster (not UTF-8 text)") from None
        return cls.from_json(text, source=str(path))


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key written twice (a reader would see only the last)."""
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"repeated keys {repeated}")
    return dict(pairs)


def _site_id(text: str) -> int:
    """A site id written canonically (``"7"``, not ``"07"`` or ``" 7"``)."""
    if not text.isdigit() or str(int(text)) != text:
        raise ValueError(f"site id {text!r} is not written as a plain number")
    return int(text)
