"""Threshold ``he``'s t-of-n parts (Shamir dealing and sealing, Lagrange-scaled partial
decryptions, the decrypting set) against a malicious server, alone or with semi-honest
colluding sites (from the third security review: the first two tests failed before exactly t
sites decrypted and the keyring checked its decrypting set)."""

import numpy as np
import pytest
from threshold_federation import drive, federation, round_sessions

from fedshield import wire
from fedshield.crypto.seal_codec import SealCiphertext
from fedshield.crypto.threshold import parms_bytes
from fedshield.engine.runner import run_protocol
from fedshield.engine.transport import InProcessTransport
from fedshield.errors import FedshieldError, InvalidShare
from fedshield.protocols.he import threshold_keys
from fedshield.protocols.he.common import THRESHOLD_KEY_ID
from fedshield.protocols.he.params import plan_for
from fedshield.protocols.he.threshold import ThresholdServer
from fedshield.protocols.he.threshold_keyring import sealed_share_bytes
from fedshield.protocols.he.threshold_keys import (
    ThresholdKeySetupClient,
    ThresholdKeySetupServer,
    _share_bytes,
)


class _KeepingPartials(ThresholdServer):
    """An honest server that merely keeps each site's partial decryption (it receives them)."""

    def _take_partial(self, stage, sender, message):
        super()._take_partial(stage, sender, message)
        kept = getattr(self, "kept", {})
        kept[sender] = np.array(message.array(0, dtype="<u8")).reshape(self.partials.shape)
        self.kept = kept


def _centered(values: np.ndarray, q: int) -> np.ndarray:
    v = values.astype(object) % q
    return np.where(v > q // 2, v - q, v)


def test_partials_of_more_than_t_decryptors_do_not_cancel_the_key_out():
    """Three sites, threshold 2, all three contribute: each sends h_j = c1 lambda_j sigma_j +
    E_j. Since x sigma(x) has degree t <= |D| - 1, sum_j x_j lambda_j sigma_j = 0, so the
    passive server computes sum_j x_j h_j = sum_j x_j E_j: an exact small relation among the
    flooding noises, free of the key (|D| - t of them a round; for large |D| and small t they
    wrap mod q and pin every E_j, hence sigma_j = (h_j - E_j) / (c1 lambda_j), hence s).
    Secure behaviour: no small-coefficient combination of the partials is key-free."""
    server, clients = round_sessions(3, round=301, server_class=_KeepingPartials, threshold=2)
    outcome = run_protocol(server, InProcessTransport(clients))
    assert outcome.aborted is None
    moduli, bits = server.moduli, server.plan.flood_bits
    rows = [
        sum((c + 1) * server.kept[c][:, row].astype(object) for c in server.kept) % q
        for row, q in enumerate(moduli)
    ]
    combo = _crt(rows, moduli)  # the combination mod Q = q0 q1, centred
    largest = int(np.abs(combo).max())
    assert largest > 2 ** (bits + 8), (
        f"sum_j x_j h_j mod Q is {largest.bit_length()} bits of {_bits(moduli)}: the flooding "
        f"noises' own combination (F = {bits}), not masked by the key"
    )


def _bits(moduli) -> int:
    return int(np.prod(np.array(moduli, dtype=object))).bit_length()


def _crt(rows: list[np.ndarray], moduli: list[int]) -> np.ndarray:
    """Residues (one array per prime) as integers mod the primes' product, centred."""
    big = 1
    for q in moduli:
        big *= q
    total = np.zeros_like(rows[0], dtype=object)
    for r, q in zip(rows, moduli, strict=True):
        rest = big // q
        total = total + r.astype(object) * (rest * pow(rest, -1, q))
    return _centered(total, big)


def test_a_keyring_refuses_a_decrypting_set_without_itself_or_with_repeats():
    """Defence in depth: the public ThresholdKeyring.partial computes a Lagrange coefficient
    for any list it is given (site 0 with [1, 2, 2], or [1, 2] without itself)."""
    server, clients = round_sessions(3, round=302, threshold=2)
    drive(server, clients, "decrypt")
    keyring = clients[0].keyring
    sums = clients[0]._sums()
    refused = 0
    for k, decryptors in enumerate(([1, 2, 2], [1, 2], [0, 0, 1])):
        try:
            keyring.partial(1302 + k, sums, decryptors)
        except FedshieldError:
            refused += 1
    assert refused == 3, f"only {refused} of 3 bogus decrypting sets refused"


def _key_setup(n: int, t: int, server_class):
    plan, roster, identities, _ = federation(n, threshold=t)
    sites = {c: ThresholdKeySetupClient(client_id=c, plan=plan, roster=roster,
                                        identity=identities[c]) for c in range(n)}  # fmt: skip
    server = server_class(round=0, clients=list(range(n)), dim=1, plan=plan, roster=roster)
    drive(server, sites, "install_key")
    return server, sites


@pytest.mark.parametrize("swap", ["redirect", "reflect", "other_sender", "replay_self"])
def test_a_sealed_shamir_share_cannot_be_swapped_redirected_or_reflected(swap):
    class Swapping(ThresholdKeySetupServer):
        def _relay_shares(self, stage):
            s = self.sealed
            if swap == "redirect":  # 0's share for 2 shown to 1 as 0's share for 1
                s[(0, 1)] = s[(0, 2)]
            elif swap == "reflect":  # 1's share for 0 sent back to 1 as 0's share for 1
                s[(0, 1)] = s[(1, 0)]
            elif swap == "other_sender":  # 2's share for 1 shown as 0's share for 1
                s[(0, 1)] = s[(2, 1)]
            else:  # 2's share for 1 in both slots
                s[(3, 1)] = s[(2, 1)]
            return super()._relay_shares(stage)

    server, sites = _key_setup(4, 3, Swapping)
    message = server.broadcast("install_key")[1]
    with pytest.raises(InvalidShare, match="failed authentication"):
        sites[1].handle("install_key", message)
    assert sites[1].keyring is None


@pytest.mark.parametrize("bad", ["unreduced", "short"])
def test_an_unreduced_or_short_shamir_share_from_a_dealer_is_a_typed_error(bad, monkeypatch):
    """A (deviating) dealer, site 0, seals a Shamir share that is not reduced mod q, or too
    short: its receiver refuses with InvalidShare, not an untyped numpy error."""
    real = threshold_keys.seal_shamir

    def seal(share, key, *, round, sender, receiver):
        if sender == 0:
            share = share.copy()
            if bad == "unreduced":
                share[0, 0] = np.uint64(2**64 - 1)
            else:
                sealed = real(share[:, :-1], key, round=round, sender=sender, receiver=receiver)
                return sealed + bytes(8 * share.shape[0])  # the expected sealed size
        return real(share, key, round=round, sender=sender, receiver=receiver)

    federation(3, threshold=2)  # (cached) made honestly before the patch
    monkeypatch.setattr(threshold_keys, "seal_shamir", seal)
    server, sites = _key_setup(3, 2, ThresholdKeySetupServer)
    with pytest.raises(InvalidShare):
        sites[1].handle("install_key", server.broadcast("install_key")[1])


def test_the_largest_honest_reveal_fits_the_servers_bound_at_128_sites():
    """n = 128: a site's reveal (its public share and 127 sealed Shamir shares) fits the
    key-setup server's message bound, and one byte over it is a typed error."""
    from fedshield.protocols.he.params import HEConfig

    plan = plan_for(HEConfig(keys="threshold", clip=0.5, quant_bits=8, weight_bits=8,
                             max_weight=100.0), n_clients=128, dim=10)  # fmt: skip
    server = ThresholdKeySetupServer.__new__(ThresholdKeySetupServer)
    server.clients, server.plan = tuple(range(128)), plan
    bound = server._max_message_bytes("reveal_share")
    header = wire.Header(THRESHOLD_KEY_ID, 3, 0, 5)
    body = [b"\1" * _share_bytes(plan), b"\2" * (127 * sealed_share_bytes(plan))]
    honest = wire.serialize(header, body)
    assert len(honest) <= bound
    wire.parse(honest, max_bytes=bound)
    too_big = wire.serialize(header, [body[0], body[1] + b"\0" * (bound - len(honest) + 1)])
    with pytest.raises(FedshieldError):
        wire.parse(too_big, max_bytes=bound)


def test_keyring_partial_refuses_a_zero_second_polynomial_with_lagrange_scaling():
    """A sum whose c1 is zero would make the partial the bare flooding: refused (typed)."""
    server, clients = round_sessions(3, round=303, threshold=2)
    drive(server, clients, "decrypt")
    keyring = clients[0].keyring
    data = clients[0]._sums()[0].data.copy()
    data[1] = 0
    zero = SealCiphertext(parms_bytes(keyring.context.first_parms_id()), False, data)
    with pytest.raises(FedshieldError):
        keyring.partial(1303, [zero], [0, 1, 2])
