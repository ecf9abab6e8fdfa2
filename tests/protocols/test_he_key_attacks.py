"""``he``'s key distribution against a malicious server (issue 14, point 6).

The server drives the real sessions and rewrites what it relays, as a malicious one would:
it adds a recipient of its own, swaps a member's transport key at ``seal``, or swaps the key
holder's at ``install`` (so that a site installs a key the server chose). Every transport key
is signed by its site's roster identity, and each attempt fails: the server obtains no key and
no site installs one the key holder did not make.
"""

import numpy as np
import pytest
from enrolment import IDENTITIES, ROSTER, signing_as

from fedshield import wire
from fedshield.crypto.keys import KeyPair, open_share, seal_share
from fedshield.engine.runner import run_protocol
from fedshield.engine.transport import InProcessTransport
from fedshield.errors import BadSignature, InvalidMessage, UnknownSender, WrongShape
from fedshield.protocols.he.common import KEY_TRANSPORT_LABEL, key_transport_statement
from fedshield.protocols.he.keys import (
    HEKeyring,
    HEKeySetupClient,
    HEKeySetupServer,
    _transport_info,
)
from fedshield.protocols.he.params import HEConfig, plan_for

CONFIG = HEConfig(clip=0.5, quant_bits=8, weight_bits=8, max_weight=100.0)
PLAN = plan_for(CONFIG, n_clients=3, dim=10)
SITES = [0, 1, 2]  # site 0 holds the key
HOLDER = 0


def _sessions():
    server = HEKeySetupServer(
        round=0, clients=SITES, dim=1, plan=PLAN, holder=HOLDER, roster=ROSTER
    )
    clients = {
        c: HEKeySetupClient(client_id=c, plan=PLAN, holder=HOLDER, **signing_as(c)) for c in SITES
    }
    return server, clients


class _MaliciousRelay(InProcessTransport):
    """The server's relay: :meth:`rewrite` changes what it forwards; every reply is kept."""

    def __init__(self, sessions):
        super().__init__(sessions)
        self.keys = KeyPair.generate()  # the server's own X25519 key
        self.replies: dict[str, dict[int, bytes | None]] = {}

    def exchange(self, stage, messages):
        replies = super().exchange(stage, self.rewrite(stage, dict(messages)))
        self.replies[stage] = {c: r.data for c, r in replies.items()}
        return replies

    def rewrite(self, stage, messages):
        return messages

    def transport_key(self, site: int) -> bytes:
        """The transport key ``site`` advertised (its first field)."""
        return wire.parse(self.replies["advertise"][site]).raw(0)

    def opened(self, site: int) -> bytes | None:
        """What the server opens of the key sealed for ``site`` under its own key (the secret
        key, or ``None`` when the holder sealed nothing for it)."""
        reply = self.replies.get("seal", {}).get(HOLDER)
        if reply is None:
            return None
        sites, sizes, blob = wire.parse(reply).fields[:3]
        if site not in sites.tolist():
            return None
        k = sites.tolist().index(site)
        start = int(np.sum(sizes[:k]))
        key = self.keys.agree(
            self.transport_key(HOLDER), info=_transport_info(PLAN.params_id, HOLDER, site)
        )
        sealed = bytes(blob[start : start + int(sizes[k])])
        return open_share(key, sealed, round=0, sender=HOLDER, receiver=site)


def _rewritten(data: bytes, change) -> bytes:
    message = wire.parse(data)
    return wire.serialize(message.header, change(list(message.fields)))


class _RogueRecipient(_MaliciousRelay):
    """Attack (a): ask the key holder to seal the key also to ``rogue`` (a stranger, or a
    roster member outside this setup) under the server's own key; for the signature it
    replays a real one (site 1's)."""

    rogue = 77

    def rewrite(self, stage, messages):
        if stage == "seal":

            def add(fields):
                fields[0] = np.append(fields[0], np.uint32(self.rogue)).astype(np.uint32)
                fields[1] = fields[1] + self.keys.public_bytes
                if len(fields) > 2:  # the relayed signatures
                    fields[2] = fields[2] + fields[2][:64]
                return fields

            messages[HOLDER] = _rewritten(messages[HOLDER], add)
        return messages


class _SwappedMemberKey(_MaliciousRelay):
    """Attack (b), at ``seal``: site 2's transport key swapped for the server's own (site 2's
    real signature left beside it)."""

    def rewrite(self, stage, messages):
        if stage == "seal":

            def swap(fields):
                k = fields[0].tolist().index(2)
                publics = bytearray(fields[1])
                publics[32 * k : 32 * (k + 1)] = self.keys.public_bytes
                fields[1] = bytes(publics)
                return fields

            messages[HOLDER] = _rewritten(messages[HOLDER], swap)
        return messages


class _SwappedHolderKey(_MaliciousRelay):
    """Attack (b), at ``install``: site 1 is sent a key of the server's choosing, sealed by
    the server's own transport key posing as the key holder's (``forge_only``: the holder's
    real transport key is kept, only the sealed key is the server's)."""

    forge_only = False

    def __init__(self, sessions):
        super().__init__(sessions)
        self.chosen = HEKeyring.generate(PLAN)  # the key the server wants site 1 to use

    def rewrite(self, stage, messages):
        if stage == "install" and 1 in messages:
            key = self.keys.agree(
                self.transport_key(1), info=_transport_info(PLAN.params_id, HOLDER, 1)
            )
            sealed = seal_share(key, self.chosen.secret_bytes(), round=0, sender=HOLDER, receiver=1)

            def swap(fields):
                if not self.forge_only:
                    fields[0] = self.keys.public_bytes
                fields[-1] = sealed
                return fields

            messages[1] = _rewritten(messages[1], swap)
        return messages


def _refusal(outcome, stage: str, site: int) -> str:
    """Why ``site`` gave no answer at ``stage`` (the error its session raised)."""
    (stats,) = [s for s in outcome.stages if s.stage == stage]
    return stats.rejected[site]


# 5: on the roster, but not in this key setup; 77: not on the roster
@pytest.mark.parametrize(("rogue", "error"), [(77, "UnknownSender"), (5, "BadSignature")])
def test_a_rogue_recipient_added_by_the_server_gets_no_key(rogue, error):
    server, clients = _sessions()
    relay = type("Relay", (_RogueRecipient,), {"rogue": rogue})(clients)
    outcome = run_protocol(server, relay)
    assert relay.opened(rogue) is None  # the holder sealed nothing for the server
    assert _refusal(outcome, "seal", HOLDER).startswith(f"client: {error}")
    assert "key holder" in outcome.aborted  # it refused to seal at all
    assert clients[1].keyring is None and clients[2].keyring is None


def test_a_member_key_swapped_at_seal_gets_the_server_no_key():
    server, clients = _sessions()
    relay = _SwappedMemberKey(clients)
    outcome = run_protocol(server, relay)
    assert relay.opened(2) is None
    assert _refusal(outcome, "seal", HOLDER).startswith("client: BadSignature: site 2")
    assert outcome.revealed is None and "key holder" in outcome.aborted
    assert relay.replies["seal"][HOLDER] is None


@pytest.mark.parametrize(("forge_only", "error"), [(False, "BadSignature"), (True, "InvalidShare")])
def test_a_site_never_installs_a_key_the_server_sealed(forge_only, error):
    """Swapping the holder's key fails its signature; keeping it, the server cannot seal
    under it (the sealed key opens only under the holder's and the site's transport keys)."""
    server, clients = _sessions()
    relay = type("Relay", (_SwappedHolderKey,), {"forge_only": forge_only})(clients)
    outcome = run_protocol(server, relay)
    assert clients[1].keyring is None
    assert relay.replies["install"][1] is None
    assert _refusal(outcome, "install", 1).startswith(f"client: {error}")
    assert outcome.revealed.contributors == (0, 2)  # site 2 installed the holder's key
    assert clients[2].keyring.secret_bytes() == clients[0].keyring.secret_bytes()


@pytest.mark.parametrize(("signer", "error"), [(3, BadSignature), (2, WrongShape)])
def test_the_server_relays_only_signed_transport_keys(signer, error):
    """Site 2's advertised key is refused on arrival (and site 2 gets no key) when another
    identity signed it (a network impostor, or a member signing for another), or when it is
    site 1's key (signed by site 2: two sites would share one sealed key)."""
    server, clients = _sessions()
    broadcast = server.broadcast("advertise")
    replies = {c: clients[c].handle("advertise", broadcast[c]) for c in SITES}
    public = wire.parse(replies[1 if signer == 2 else 2]).raw(0)
    statement = key_transport_statement(0, PLAN.params_id, 2, public)
    signature = ROSTER.sign(IDENTITIES[signer], KEY_TRANSPORT_LABEL, statement)
    replies[2] = _rewritten(replies[2], lambda fields: [public, signature])
    for c in SITES:
        if c == 2:
            with pytest.raises(error):
                server.receive("advertise", c, replies[c])
        else:
            server.receive("advertise", c, replies[c])
    server.close_stage("advertise")
    assert server.alive == {0, 1}


def _seal_request():
    """Fresh sessions after ``advertise``, and the server's honest ``seal`` request."""
    server, clients = _sessions()
    for c, msg in server.broadcast("advertise").items():
        server.receive("advertise", c, clients[c].handle("advertise", msg))
    server.close_stage("advertise")
    return server.broadcast("seal")[HOLDER], clients


def _swap_signatures(fields):
    fields[2] = fields[2][64:128] + fields[2][:64]  # sites 1 and 2's signatures exchanged
    return fields


def test_the_key_holder_refuses_a_seal_list_it_cannot_verify():
    """Driven by hand: signatures exchanged between two sites, or a site off the roster."""
    request, clients = _seal_request()
    with pytest.raises(BadSignature):
        clients[HOLDER].handle("seal", _rewritten(request, _swap_signatures))
    request, clients = _seal_request()
    stranger = _RogueRecipient(clients).rewrite("seal", {HOLDER: request})[HOLDER]
    with pytest.raises(UnknownSender):
        clients[HOLDER].handle("seal", stranger)
    assert issubclass(BadSignature, InvalidMessage) and issubclass(UnknownSender, InvalidMessage)
