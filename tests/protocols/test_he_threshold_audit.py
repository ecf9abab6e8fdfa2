"""Threshold ``he`` audited further (from the second security review): malformed messages in
both directions get typed errors, the digest kernel is exact at the largest values, a replayed
commitment stops the key setup, and two sessions of one round cannot be mixed."""

import numpy as np
import pytest
from threshold_federation import federation, round_sessions

from fedshield import wire
from fedshield.crypto import digest
from fedshield.errors import FedshieldError, ProtocolAbort
from fedshield.protocols.he import coefficients
from fedshield.protocols.he.threshold import _shape, data_moduli
from fedshield.protocols.he.threshold_keys import (
    ThresholdKeySetupClient,
    ThresholdKeySetupServer,
)


def _inputs(server, clients) -> dict[int, np.ndarray]:
    """Each site's ciphertexts (the server holds them anyway)."""
    out = {}
    for c, m in server.broadcast("input").items():
        answer = clients[c].handle("input", m)
        server.receive("input", c, answer)
        out[c] = coefficients.unpack(
            wire.parse(answer).fields[0], _shape(server.plan), server.moduli
        )
    server.close_stage("input")
    return out


def _sign(server, client, total) -> tuple[bytes, bytes]:
    """Show ``client`` the sum ``total``; its signed digests."""
    m = server._server_message("digest", [server.plan.params_id, coefficients.pack(total)])
    fields = wire.parse(client.handle("digest", m)).fields
    return bytes(fields[0]), bytes(fields[1])


def _decrypt_message(server, signed: dict[int, tuple[bytes, bytes]]) -> bytes:
    sites = sorted(signed)
    return server._server_message("decrypt", [
        server.plan.params_id, np.array(sites, np.uint32),
        b"".join(signed[c][0] for c in sites), b"".join(signed[c][1] for c in sites),
    ])  # fmt: skip


def test_ciphertexts_of_two_sessions_of_one_round_are_not_decrypted_as_a_sum():
    """Two sessions of round 60 (a retry, say): a server holding both sessions' ciphertexts
    could fix a sum that mixes site 0's of session A with sites 1 and 2's of session B, and
    every site would sign digests of its own ciphertexts for it. A site sends one input per
    round, ever, so session B gets none."""
    server_a, clients_a = round_sessions(3, round=60)
    _inputs(server_a, clients_a)
    server_b, clients_b = round_sessions(3, round=60)
    for c, m in server_b.broadcast("input").items():
        with pytest.raises(ProtocolAbort, match="already sent its input"):
            clients_b[c].handle("input", m)


def test_the_digest_kernel_does_not_overflow_at_the_largest_values():
    """Every coefficient q - 1, every weight 2^32 - 1: the numba kernel's sum must equal
    the exact one."""
    plan = federation(3)[0]
    moduli = data_moduli(plan)
    values = np.empty((1, 2, len(moduli), 4096), np.uint64)
    for limb, q in enumerate(moduli):
        values[:, :, limb] = q - 1
    weights = np.full((digest.DIGESTS, values.size), 2**32 - 1, np.uint64)
    got = digest.digests(values, weights, moduli)
    for limb, q in enumerate(moduli):
        exact = ((q - 1) * (2**32 - 1) * (values.size // len(moduli))) % q
        assert got[0, limb] == exact and got[1, limb] == exact


def _mutations(message: bytes, rng) -> list[bytes]:
    """Truncated, extended, bit-flipped and field-shuffled copies of ``message``."""
    parsed = wire.parse(message)
    out = [message[:-1], message + b"\0", message[: len(message) // 2], b"", b"\xff" * 40]
    for _ in range(6):
        pos = int(rng.integers(0, len(message)))
        out.append(message[:pos] + bytes([message[pos] ^ 0xFF]) + message[pos + 1 :])
    fields = list(parsed.fields)
    for k in range(len(fields)):
        junk = list(fields)
        junk[k] = np.zeros(3, np.float32) if isinstance(fields[k], bytes | memoryview) else b"x"
        out.append(wire.serialize(parsed.header, junk))
        out.append(wire.serialize(parsed.header, fields[:k]))
    out.append(wire.serialize(parsed.header, [*fields, b"extra"]))
    return out


@pytest.mark.parametrize("stage", ["digest", "decrypt", "aggregate"])
def test_malformed_server_messages_get_typed_errors(stage):
    rng = np.random.default_rng(7)
    round = {"digest": 61, "decrypt": 62, "aggregate": 63}[stage]
    server, clients = round_sessions(3, round=round)
    stages = list(server.stages)
    for s in stages[: stages.index(stage)]:
        for c, m in server.broadcast(s).items():
            server.receive(s, c, clients[c].handle(s, m))
        server.close_stage(s)
    honest = server.broadcast(stage)[0]
    state = ("_mine", "_total", "_seed", "_expected", "_stage_index")
    for k, bad in enumerate(_mutations(honest, rng)):
        site = round_sessions(3, round=round)[1][0]
        site.__dict__.update({key: clients[0].__dict__[key] for key in state})
        try:
            site.handle(stage, bad)
        except FedshieldError:
            continue
        except Exception as exc:
            pytest.fail(f"mutation {k} at {stage}: untyped {type(exc).__name__}: {exc}")
        # A changed sum is the server's to choose; a changed aggregate too (not claimed).
        assert stage != "decrypt", f"mutation {k} accepted at {stage}"


def test_malformed_site_answers_get_typed_errors_at_the_server():
    rng = np.random.default_rng(8)
    server, clients = round_sessions(3, round=64)
    for s in server.stages:
        answers = {c: clients[c].handle(s, m) for c, m in server.broadcast(s).items()}
        for bad in _mutations(answers[0], rng):
            probe = type(server).__new__(type(server))
            probe.__dict__.update(server.__dict__)
            probe.alive, probe._answered = set(server.alive), set(server._answered)
            probe.total, probe.partials = server.total.copy(), server.partials.copy()
            try:
                probe.receive(s, 0, bad)
            except FedshieldError:
                continue
            except Exception as exc:
                pytest.fail(f"server at {s}: untyped {type(exc).__name__}: {exc}")
        for c, answer in answers.items():
            server.receive(s, c, answer)
        server.close_stage(s)


def test_a_commitment_from_an_earlier_key_setup_is_not_accepted():
    """The server replays site 1's signed commitment (and share) from a first key setup
    into a second one, shown to site 0: site 0 must not install a key with it."""
    plan, roster, identities, _ = federation(3)

    def setup():
        sites = {
            c: ThresholdKeySetupClient(client_id=c, plan=plan, roster=roster,
                                       identity=identities[c])
            for c in range(3)
        }  # fmt: skip
        server = ThresholdKeySetupServer(round=0, clients=[0, 1, 2], dim=1, plan=plan,
                                         roster=roster)  # fmt: skip
        return server, sites

    old_server, old_sites = setup()
    for s in old_server.stages[:1]:
        for c, m in old_server.broadcast(s).items():
            old_server.receive(s, c, old_sites[c].handle(s, m))
        old_server.close_stage(s)
    server, sites = setup()
    for c, m in server.broadcast("commit_share").items():
        server.receive("commit_share", c, sites[c].handle("commit_share", m))
    server.close_stage("commit_share")
    server.digests[1], server.signatures[1] = old_server.digests[1], old_server.signatures[1]
    messages = server.broadcast("confirm_shares")
    with pytest.raises(FedshieldError):  # site 1 never signs a list with its old commitment
        sites[1].handle("confirm_shares", messages[1])
    sites[0].handle("confirm_shares", messages[0])  # site 0 signs what it saw, and waits
