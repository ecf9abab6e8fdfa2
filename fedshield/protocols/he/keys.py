"""HE key material on the sites' side, and its end-to-end distribution through the server.

Building block: use the ``he`` protocol (:mod:`fedshield.protocols.he`) unless you know why not.

A designated key-holder site generates the SEAL secret key. Every site advertises a fresh
X25519 transport key, signed by its identity key on the federation's
:class:`~fedshield.protocols.roster.Roster`; the key holder encrypts the serialized secret key to
each listed site's key with AES-GCM under an HKDF-SHA256 key from X25519, bound to the
parameters id, the key holder and the receiver. The server only relays public keys, signatures
and AEAD ciphertexts; its side of this session (:class:`HEKeySetupServer`) holds no key.

Threat model. The server may rewrite, add or drop anything it relays. Each signature binds the
round, the parameters id, the site, its transport key and the roster. So:

- the key holder seals only to roster members whose signed key verifies. A recipient of the
  server's own (a stranger, or a member's id with the server's key) or a swapped key makes it
  refuse to seal at all, so the server gets no key;
- a site opens only a key sealed under the key holder's signed transport key. The AEAD key
  comes from X25519 between two signed keys, so only the holder could have sealed it: a key of
  the server's choosing, which it could decrypt later, is refused. The sealed key therefore
  needs no separate signature;
- transport keys are fresh per setup, so replayed keys and sealed keys open nothing.

The server can still leave a site out (it gets no key), and it sees who takes part. Every site
holds the same secret key, so a server colluding with any one site reads everything
(:mod:`fedshield.protocols.he`). A site whose identity key is stolen can be impersonated.

Stages (:class:`~fedshield.protocols.he.common.HEKeyStage`): ``advertise`` (each site: its
signed X25519 public key) → ``seal`` (the key holder: one sealed key per verified site) →
``install`` (each site checks the holder's signed key and opens its sealed key).
"""

from __future__ import annotations

import numpy as np
import tenseal.sealapi as sa

from fedshield import wire
from fedshield._validate import check_instance, check_int
from fedshield.crypto.identity import SIGNATURE_BYTES, Identity
from fedshield.crypto.keys import (
    PUBLIC_KEY_BYTES,
    KeyPair,
    open_share,
    seal_share,
    validate_public_key,
)
from fedshield.crypto.seal import SealIO
from fedshield.errors import InvalidShare, ProtocolAbort, UnknownSender, WrongShape
from fedshield.protocols.base import (
    ClientSession,
    Revealed,
    ServerSession,
    broadcasts,
    closes,
    handles,
    receives,
)
from fedshield.protocols.he.common import (
    KEY_PROTOCOL_ID,
    KEY_STAGES,
    KEY_TRANSPORT_LABEL,
    HEKeyStage,
    key_transport_statement,
)
from fedshield.protocols.he.params import HEPlan
from fedshield.protocols.roster import Roster

__all__ = ["HEKeySetupClient", "HEKeySetupServer", "HEKeyring"]
_MAX_SEALED = 1 << 20


class HEKeyring:
    """What a site holds: the parameters, the SEAL context and the secret key.

    Never constructed on the server. :meth:`generate` makes a new key (on the key holder);
    :meth:`from_secret_bytes` installs a distributed one.
    """

    def __init__(self, plan: HEPlan, secret_key: sa.SecretKey, io: SealIO) -> None:
        check_instance("plan", plan, HEPlan)
        check_instance("secret_key", secret_key, sa.SecretKey)
        check_instance("io", io, SealIO)
        self.plan = plan
        self.context = io.context
        self.io = io
        self.secret_key = secret_key
        self.encryptor = sa.Encryptor(self.context, secret_key)
        self.decryptor = sa.Decryptor(self.context, secret_key)
        if plan.scheme == "bfv":
            self.encoder = sa.BatchEncoder(self.context)
        else:
            self.encoder = sa.CKKSEncoder(self.context)

    @classmethod
    def generate(cls, plan: HEPlan) -> HEKeyring:
        """A fresh secret key for ``plan`` (from SEAL's CSPRNG)."""
        io = SealIO(plan.context())
        return cls(plan, sa.KeyGenerator(io.context).secret_key(), io)

    @classmethod
    def from_secret_bytes(cls, plan: HEPlan, data: bytes) -> HEKeyring:
        """Install a serialized secret key (checked against the plan's parameters)."""
        io = SealIO(plan.context())
        return cls(plan, io.load_secret_key(data), io)

    def encrypt(self, plaintext: sa.Plaintext):
        """A seeded symmetric encryption (a ``Serializable``: dump it to send)."""
        return self.encryptor.encrypt_symmetric(plaintext)

    def secret_bytes(self) -> bytes:
        """The serialized secret key: only ever sealed to another site or written locally."""
        return self.io.dump(self.secret_key)


def _transport_info(params_id: bytes, holder: int, site: int) -> bytes:
    return (
        b"fedshield/he/key-transport"
        + params_id
        + holder.to_bytes(4, "little")
        + (site.to_bytes(4, "little"))
    )


class HEKeySetupServer(ServerSession):
    """Server side of key distribution: relays public keys and sealed keys, learns neither.

    Args:
        round, clients, dim: as for every :class:`~fedshield.protocols.base.ServerSession`.
        plan: the HE parameters (each site checks they are its own).
        holder: the site that makes the key (one of ``clients``).
        roster: the federation's roster: ``clients`` must be members; every transport key is
            checked against its site's identity before it is relayed.
    """

    protocol_id = KEY_PROTOCOL_ID
    stages = KEY_STAGES

    def __init__(
        self, *, round: int, clients, dim: int, plan: HEPlan, holder: int, roster: Roster
    ) -> None:
        super().__init__(round=round, clients=clients, dim=dim)
        check_instance("plan", plan, HEPlan, "from plan_for")
        check_instance("roster", roster, Roster, "Roster.enrol or Roster.load")
        if check_int("holder", holder, low=0) not in self.clients:
            raise ValueError(f"holder must be one of clients {list(self.clients)}, got {holder}")
        strangers = sorted(set(self.clients) - set(roster.sites))
        if strangers:
            raise ValueError(f"clients {strangers} are not on the federation's roster")
        self.plan, self.holder, self.roster = plan, holder, roster
        self.public: dict[int, bytes] = {}
        self.signatures: dict[int, bytes] = {}
        self.sealed: dict[int, bytes] = {}
        self.installed: set[int] = set()

    def _max_message_bytes(self, stage: str) -> int:
        return 256 + len(self.clients) * (8 + _MAX_SEALED)

    @broadcasts(HEKeyStage.ADVERTISE)
    def _ask_for_public_keys(self, stage: str) -> dict[int, bytes]:
        msg = self._server_message(stage, [self.plan.params_id])
        return dict.fromkeys(sorted(self.alive), msg)

    @receives(HEKeyStage.ADVERTISE)
    def _take_public_key(self, stage: str, sender: int, message: wire.Message) -> None:
        message.require_fields(2)
        public = message.raw(0, length=PUBLIC_KEY_BYTES)
        signature = message.raw(1, length=SIGNATURE_BYTES)
        validate_public_key(public)
        statement = key_transport_statement(self.round, self.plan.params_id, sender, public)
        self.roster.verify(sender, signature, KEY_TRANSPORT_LABEL, statement)
        if public in self.public.values():
            raise WrongShape(f"client {sender} reused another site's transport key")
        self.public[sender], self.signatures[sender] = public, signature

    @broadcasts(HEKeyStage.SEAL)
    def _ask_holder_to_seal(self, stage: str) -> dict[int, bytes]:
        if self.holder not in self.public:
            raise ProtocolAbort("the key holder did not advertise a key")
        sites = [c for c in sorted(self.alive) if c != self.holder]
        fields = [
            np.array(sites, dtype=np.uint32),
            b"".join(self.public[c] for c in sites),
            b"".join(self.signatures[c] for c in sites),
        ]
        return {self.holder: self._server_message(stage, fields)}

    @receives(HEKeyStage.SEAL)
    def _take_sealed_keys(self, stage: str, sender: int, message: wire.Message) -> None:
        if sender != self.holder:
            raise UnknownSender(f"client {sender} is not the key holder")
        message.require_fields(3)
        sites = message.array(0, dtype="<u4").tolist()
        sizes = message.array(1, dtype="<u4", shape=(len(sites),)).tolist()
        blob = message.raw(2, length=sum(sizes))
        if not set(sites) <= set(self.public) or len(set(sites)) != len(sites):
            raise WrongShape("the key holder sealed keys for unknown sites")
        offset = 0
        for site, size in zip(sites, sizes, strict=True):
            self.sealed[site] = blob[offset : offset + size]
            offset += size

    @closes(HEKeyStage.SEAL)
    def _close_seal(self, stage: str) -> None:
        if self.holder not in self.alive:
            raise ProtocolAbort("the key holder dropped out before sealing the key")

    @broadcasts(HEKeyStage.INSTALL)
    def _relay_sealed_keys(self, stage: str) -> dict[int, bytes]:
        holder = [self.public[self.holder], self.signatures[self.holder]]
        return {
            c: self._server_message(stage, [*holder, self.sealed.get(c, b"")])
            for c in sorted(self.alive)
            if c == self.holder or c in self.sealed
        }

    @receives(HEKeyStage.INSTALL)
    def _take_receipt(self, stage: str, sender: int, message: wire.Message) -> None:
        message.require_fields(0)
        self.installed.add(sender)

    def _reveal(self) -> Revealed:
        return Revealed(
            contributors=tuple(sorted(self.installed)),
            weighted_sum=None,
            total_weight=None,
            dropped=tuple(c for c in self.clients if c not in self.installed),
        )


class HEKeySetupClient(ClientSession):
    """Site side of key distribution; the key holder also generates the key.

    After ``install``, :attr:`keyring` holds the site's :class:`HEKeyring`.

    Args:
        client_id: this site's id.
        plan: the HE parameters (the server's must be the same).
        holder: the site that makes the key.
        roster: the federation's roster: the key holder seals only to its members, under
            transport keys their identities signed; a site opens only a key sealed under the
            holder's signed key.
        identity: this site's identity key (its public half is on the roster).
        round: the session's round (0 for a federation's one-time setup).
    """

    protocol_id = KEY_PROTOCOL_ID
    stages = KEY_STAGES
    skippable = frozenset({HEKeyStage.SEAL})  # only the key holder seals

    def __init__(
        self, *, client_id: int, plan: HEPlan, holder: int, roster: Roster, identity: Identity,
        round: int = 0,
    ) -> None:  # fmt: skip
        super().__init__(
            client_id=client_id, round=round, update=np.zeros(1, np.float32), weight=1.0
        )
        check_instance("plan", plan, HEPlan, "from plan_for")
        check_instance("roster", roster, Roster, "Roster.enrol or Roster.load")
        check_instance("identity", identity, Identity)
        self.holder = check_int("holder", holder, low=0)
        roster.check_identity(client_id, identity.public_bytes)
        if holder not in roster.members:
            raise ValueError(f"the key holder {holder} is not on the federation's roster")
        self.plan, self.roster, self.identity = plan, roster, identity
        self.transport_keys = KeyPair.generate()
        self.keyring: HEKeyring | None = HEKeyring.generate(plan) if client_id == holder else None

    def _statement(self, site: int, public: bytes) -> bytes:
        return key_transport_statement(self.round, self.plan.params_id, site, public)

    @handles(HEKeyStage.ADVERTISE)
    def _advertise(self, stage: str, message: wire.Message) -> bytes:
        message.require_fields(1)
        if message.raw(0, length=32) != self.plan.params_id:
            raise WrongShape("the server's HE parameters differ from this site's")
        public = self.transport_keys.public_bytes
        signature = self.roster.sign(
            self.identity, KEY_TRANSPORT_LABEL, self._statement(self.client_id, public)
        )
        return self._client_message(stage, [public, signature])

    @handles(HEKeyStage.INSTALL)
    def _install(self, stage: str, message: wire.Message) -> bytes:
        message.require_fields(3)
        holder_public = message.raw(0, length=PUBLIC_KEY_BYTES)
        signature = message.raw(1, length=SIGNATURE_BYTES)
        if self.client_id != self.holder:
            # Only a key sealed under the holder's own (signed) transport key is the holder's.
            statement = self._statement(self.holder, holder_public)
            self.roster.verify(self.holder, signature, KEY_TRANSPORT_LABEL, statement)
            sealed = message.raw(2, max_len=_MAX_SEALED)
            key = self.transport_keys.agree(
                holder_public,
                info=_transport_info(self.plan.params_id, self.holder, self.client_id),
            )
            secret = open_share(
                key, sealed, round=self.round, sender=self.holder, receiver=self.client_id
            )
            self.keyring = HEKeyring.from_secret_bytes(self.plan, secret)
        return self._client_message(stage, [])

    @handles(HEKeyStage.SEAL)
    def _seal(self, stage: str, message: wire.Message) -> bytes:
        if self.keyring is None or self.client_id != self.holder:
            raise InvalidShare("only the key holder seals keys")
        message.require_fields(3)
        sites = message.array(0, dtype="<u4").tolist()
        publics = _split(message.raw(1, length=len(sites) * PUBLIC_KEY_BYTES), PUBLIC_KEY_BYTES)
        signatures = _split(message.raw(2, length=len(sites) * SIGNATURE_BYTES), SIGNATURE_BYTES)
        self._check_recipients(sites, publics, signatures)
        secret = self.keyring.secret_bytes()
        sealed = []
        for site, public in zip(sites, publics, strict=True):
            key = self.transport_keys.agree(
                public, info=_transport_info(self.plan.params_id, self.client_id, site)
            )
            sealed.append(
                seal_share(key, secret, round=self.round, sender=self.client_id, receiver=site)
            )
        sizes = np.array([len(s) for s in sealed], dtype=np.uint32)
        return self._client_message(
            stage, [np.array(sites, dtype=np.uint32), sizes, b"".join(sealed)]
        )

    def _check_recipients(self, sites: list[int], publics: list[bytes], signatures) -> None:
        """Refuse the whole list unless every site is a roster member (listed once) whose
        identity signed its transport key: the key then reaches no key of the server's."""
        strangers = sorted(set(sites) - set(self.roster.sites))
        if strangers or len(set(sites)) != len(sites):
            raise UnknownSender(
                f"the server asks to seal the key to sites outside the federation {strangers} "
                "(or to one site twice): refused"
            )
        for site, public, signature in zip(sites, publics, signatures, strict=True):
            validate_public_key(public)
            self.roster.verify(site, signature, KEY_TRANSPORT_LABEL, self._statement(site, public))


def _split(blob: bytes, size: int) -> list[bytes]:
    return [blob[i : i + size] for i in range(0, len(blob), size)]
