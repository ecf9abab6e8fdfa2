"""``he`` as an auditor checks it: exact sums at the documented maximum, a server that holds
nothing that decrypts, sealed key transport, and malformed ciphertexts rejected."""

import numpy as np
import pytest
import tenseal.sealapi as sa

from fedshield import wire
from fedshield.crypto import ring
from fedshield.engine.dropout import DropoutPolicy
from fedshield.engine.runner import run_protocol
from fedshield.engine.transport import InProcessTransport
from fedshield.errors import (
    ConfigError,
    InvalidCiphertext,
    ProtocolAbort,
    WrongShape,
)
from fedshield.protocols.he import HEClient, HEServer, pack_slots, unpack_slots
from fedshield.protocols.he.keys import HEKeyring
from fedshield.protocols.he.params import MAX_CLIENTS, HEConfig, plan_for

CONFIG = HEConfig(clip=0.5, quant_bits=8, weight_bits=8, max_weight=100.0)


def _round(
    plan,
    keyring,
    updates,
    weights,
    *,
    schedule=None,
    transport_cls=InProcessTransport,
    workers=None,
):
    server = HEServer(round=1, clients=list(updates), dim=plan.dim, plan=plan, workers=workers)
    clients = {
        c: HEClient(
            client_id=c,
            round=1,
            update=u,
            weight=weights[c],
            keyring=keyring,
            quant_seed=c,
            workers=workers,
        )
        for c, u in updates.items()
    }
    outcome = run_protocol(
        server, transport_cls(clients), dropout=DropoutPolicy(schedule=schedule or {})
    )
    return server, clients, outcome


def _expected_levels(plan, updates, weights, ids):
    """The plain integer sum the decrypted slots must equal: levels (times the integer weight,
    or of the update times its weight fraction), weight digits, and the count of sites."""
    config = plan.config
    total = np.zeros(plan.dim + config.tail_values, dtype=np.uint64)
    for c in ids:
        w = ring.integer_weight(weights[c], config.max_weight, config.weight_bits)
        quant = {"clip": config.clip, "quant_bits": config.quant_bits, "seed": c}
        if config.weighting == "integer":
            levels = ring.quantize(updates[c], **quant).astype(np.uint64) * np.uint64(w)
            tail = [w]
        else:
            share = np.float32(w / (2**config.weight_bits - 1))
            clipped = np.clip(updates[c], -config.clip, config.clip)  # clip, then weight
            levels = ring.quantize(clipped * share, **quant).astype(np.uint64)
            tail = [w, 1]  # 8-bit weights: one digit, then the count
        total[: plan.dim] += levels
        total[plan.dim :] += np.array(tail, dtype=np.uint64)
    return total


def test_packing_round_trips_and_keeps_fields_apart():
    plan = plan_for(CONFIG, n_clients=4, dim=30_000)
    values = np.random.default_rng(0).integers(0, 2**plan.value_bits, 30_001, dtype=np.uint64)
    slots = pack_slots(values, plan)
    assert plan.value_bits == 8 + 2 and plan.per_slot == (plan.plain_bits - 1) // 10 == 5
    assert slots.shape == (plan.n_ciphertexts, plan.slots)
    assert int(slots.max()) < 2 ** (plan.plain_bits - 1)
    np.testing.assert_array_equal(unpack_slots(slots, plan, values.size), values)


@pytest.mark.parametrize(
    ("weighting", "bits", "per_slot"),
    [("integer", 8, 1), ("integer", 4, 2), ("fraction", 8, 2), ("fraction", 4, 3)],
)
def test_sum_is_exact_at_the_documented_maximum_with_every_value_at_its_largest(
    weighting, bits, per_slot
):
    """1024 sites, every level and every weight at its largest: any carry would show, and
    the noise budget is at its smallest (the plain modulus is chosen for n)."""
    n, top = MAX_CLIENTS, 2**bits - 1
    config = HEConfig(
        clip=0.5, quant_bits=bits, weight_bits=bits, max_weight=100.0, weighting=weighting
    )
    probe = plan_for(config, n_clients=n, dim=1)
    assert probe.per_slot == per_slot
    dim = per_slot * 4096 - config.tail_values  # exactly one full ciphertext
    plan = plan_for(config, n_clients=n, dim=dim)
    assert plan.n_ciphertexts == 1
    keyring = HEKeyring.generate(plan)
    updates = dict.fromkeys(range(n), np.full(dim, config.clip, np.float32))  # the top level
    weights = dict.fromkeys(range(n), config.max_weight)
    _server, clients, outcome = _round(plan, keyring, updates, weights)
    assert outcome.aborted is None and len(outcome.revealed.contributors) == n
    expected = n * top * top if weighting == "integer" else n * top
    assert expected.bit_length() == plan.value_bits  # the field is full, not just wide enough
    level_sum = clients[0].level_sum
    np.testing.assert_array_equal(level_sum[:dim], np.full(dim, expected))
    assert level_sum[dim] == n * top  # the weights
    if weighting == "fraction":
        assert level_sum[dim + 1] == n  # the count of sites
    weighted_sum, total = clients[0].aggregate
    assert total == n * top and np.allclose(weighted_sum / total, config.clip)


@pytest.mark.parametrize("weighting", ["fraction", "integer"])
@pytest.mark.parametrize("workers", [1, 2], ids=["one process", "two forked workers"])
def test_random_updates_with_dropouts_give_the_survivors_exact_integer_sum(workers, weighting):
    config = HEConfig(clip=0.5, max_weight=100.0, weighting=weighting)
    plan = plan_for(config, n_clients=5, dim=20_000)
    assert plan.n_ciphertexts >= 2  # with two workers, each encrypts, adds, decrypts a part
    keyring = HEKeyring.generate(plan)
    rng = np.random.default_rng(1)
    updates = {c: rng.uniform(-0.6, 0.6, plan.dim).astype(np.float32) for c in range(5)}
    weights = {c: float(rng.integers(1, 100)) for c in range(5)}
    server, clients, outcome = _round(
        plan, keyring, updates, weights, schedule={"input": [3]}, workers=workers
    )
    assert len(server.ranges) == workers and not server.parts  # workers stopped
    assert outcome.revealed.contributors == (0, 1, 2, 4) and outcome.revealed.weighted_sum is None
    expected = _expected_levels(plan, updates, weights, [0, 1, 2, 4])
    for c in (0, 1, 2, 4):
        np.testing.assert_array_equal(clients[c].level_sum, expected)
    # The decoded weighted mean is within the documented error of the exact one.
    weighted_sum, total = clients[0].aggregate
    assert total == expected[plan.dim] and weighted_sum.shape == (plan.dim,)
    top, step, ids = 255, 2 * config.clip / 255, (0, 1, 2, 4)
    w = {c: ring.integer_weight(weights[c], config.max_weight, 8) for c in ids}
    # Both weightings clip, then weight.
    exact = sum(w[c] * np.clip(updates[c], -0.5, 0.5).astype(np.float64) for c in ids)
    # integer: one step; fraction: every site adds at most one step of the shared grid
    bound = step if weighting == "integer" else len(ids) * step * top / total
    assert np.abs(weighted_sum / total - exact / total).max() <= bound * (1 + 1e-6)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 100])
def test_the_noise_budget_left_after_summing_n_ciphertexts_is_what_the_plan_keeps(n):
    """The plan keeps 2 bits of invariant noise budget after n additions; SEAL measures what
    is left, and the sum decrypts exactly (mod t)."""
    plan = plan_for(CONFIG, n_clients=n, dim=10)
    keyring = HEKeyring.generate(plan)
    evaluator = sa.Evaluator(keyring.context)
    plaintext = sa.Plaintext()
    row = np.random.default_rng(n).integers(0, 2 ** (plan.plain_bits - 1), plan.slots, np.uint64)
    total = None
    for _ in range(n):  # n independent fresh encryptions (fresh noise each)
        keyring.encoder.encode(row.tolist(), plaintext)
        ct = sa.Ciphertext()
        keyring.encryptor.encrypt_symmetric(plaintext, ct)
        if total is None:
            total = ct
        else:
            evaluator.add_inplace(total, ct)
    budget = keyring.decryptor.invariant_noise_budget(total)
    # Measured here: 2, 2, 3, 4, 5 bits left (independent noises add in quadrature, the plan
    # assumes they add up); SEAL's reading moves by a bit from key to key.
    assert budget >= 1
    keyring.decryptor.decrypt(total, plaintext)
    expected = (row * np.uint64(n)) % np.uint64(
        keyring.context.first_context_data().parms().plain_modulus().value()
    )
    np.testing.assert_array_equal(np.array(keyring.encoder.decode_uint64(plaintext)), expected)


def test_a_server_that_misreports_the_contributors_is_caught_by_the_sites():
    plan = plan_for(CONFIG, n_clients=3, dim=500)
    keyring = HEKeyring.generate(plan)
    server = HEServer(round=1, clients=[0, 1, 2], dim=plan.dim, plan=plan)
    rng = np.random.default_rng(5)
    clients = {
        c: HEClient(
            client_id=c,
            round=1,
            update=rng.uniform(-0.5, 0.5, plan.dim).astype(np.float32),
            weight=50.0,
            keyring=keyring,
        )
        for c in range(3)
    }
    for c, request in server.broadcast("input").items():
        server.receive("input", c, clients[c].handle("input", request))
    server.close_stage("input")
    honest = wire.parse(server.broadcast("aggregate")[0])
    params, contributors, sizes, blob = honest.fields
    lie = wire.serialize(honest.header, [params, contributors[:2].copy(), sizes, blob])
    with pytest.raises(ProtocolAbort, match="holds 3 updates, 2 were named"):
        clients[0].handle("aggregate", lie)
    clients[1].handle("aggregate", wire.serialize(honest.header, list(honest.fields)))
    assert clients[1].aggregate[1] == 3 * 128  # three weights of 50/100 in 8 bits


def test_too_many_clients_or_too_wide_values_are_refused():
    with pytest.raises(ConfigError):
        plan_for(CONFIG, n_clients=MAX_CLIENTS + 1, dim=10)
    with pytest.raises(ConfigError):
        HEConfig(quant_bits=17)
    with pytest.raises(ConfigError, match="fraction or integer"):
        HEConfig(weighting="mean")
    for weighting in ("fraction", "integer"):  # the widest fields at the most sites still fit
        config = HEConfig(quant_bits=16, weight_bits=16, weighting=weighting)
        widest = plan_for(config, n_clients=MAX_CLIENTS, dim=10)
        assert widest.per_slot >= 1 and widest.value_bits <= widest.plain_bits - 1
    assert widest.value_bits == 16 + 16 + 10 == widest.plain_bits - 1  # integer: exactly full


def test_ckks_error_stays_within_the_documented_bound():
    config = HEConfig(scheme="ckks", max_weight=10.0)
    plan = plan_for(config, n_clients=6, dim=5000)
    keyring = HEKeyring.generate(plan)
    rng = np.random.default_rng(2)
    updates = {c: rng.normal(0, 1, plan.dim).astype(np.float32) for c in range(6)}
    weights = {c: float(c + 1) for c in range(6)}
    _server, clients, _ = _round(plan, keyring, updates, weights)
    weighted_sum, total = clients[0].aggregate
    exact = sum(weights[c] / 10 * updates[c].astype(np.float64) for c in range(6))
    assert abs(total - sum(weights.values()) / 10) <= 6 * 2**-20
    assert np.abs(weighted_sum - exact).max() <= 6 * 2**-20


# --- malformed ciphertexts ---------------------------------------------------------------
def _tampered(answer: bytes, case: str, other_plan) -> bytes:
    msg = wire.parse(answer)
    params, sizes, blob = msg.fields
    first = int(sizes[0])
    if case == "wrong params id":
        params = bytes(32)
    elif case == "garbage bytes":
        blob = bytes(len(blob))
    elif case == "truncated ciphertext":
        blob = blob[: first - 10] + blob[first:]
        sizes = sizes.copy()
        sizes[0] -= 10
    elif case == "sizes disagree":
        sizes = sizes.copy()
        sizes[0] += 1
    elif case == "other parameters":
        keyring = HEKeyring.generate(other_plan)
        pt = sa.Plaintext()
        keyring.encoder.encode([1] * other_plan.slots, pt)
        foreign = keyring.io.dump(keyring.encryptor.encrypt_symmetric(pt))
        blob = foreign + blob[first:]
        sizes = sizes.copy()
        sizes[0] = len(foreign)
    return wire.serialize(msg.header, [params, sizes, blob])


@pytest.mark.parametrize("workers", [1, 2], ids=["one process", "two forked workers"])
@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("wrong params id", WrongShape),
        ("garbage bytes", InvalidCiphertext),
        ("truncated ciphertext", InvalidCiphertext),
        ("sizes disagree", WrongShape),
        ("other parameters", InvalidCiphertext),
    ],
)
def test_malformed_ciphertexts_are_rejected_and_the_honest_round_completes(case, error, workers):
    """With two workers, the first ciphertext is bad and the second good: the worker that
    accepted its part must drop it too (nothing of a rejected site reaches the sum)."""
    plan = plan_for(CONFIG, n_clients=3, dim=30_000)
    assert plan.n_ciphertexts == 2
    other_plan = plan_for(CONFIG, n_clients=600, dim=30_000)  # another plain modulus
    keyring = HEKeyring.generate(plan)
    rng = np.random.default_rng(4)
    updates = {c: rng.uniform(-0.5, 0.5, plan.dim).astype(np.float32) for c in range(3)}
    weights = dict.fromkeys(range(3), 50.0)
    server = HEServer(round=1, clients=[0, 1, 2], dim=plan.dim, plan=plan, workers=workers)
    clients = {
        c: HEClient(
            client_id=c,
            round=1,
            update=updates[c],
            weight=50.0,
            keyring=keyring,
            quant_seed=c,
            workers=workers,
        )
        for c in range(3)
    }
    request = server.broadcast("input")
    answers = {c: clients[c].handle("input", request[c]) for c in range(3)}
    server.receive("input", 0, answers[0])
    with pytest.raises(error):
        server.receive("input", 1, _tampered(answers[1], case, other_plan))
    server.receive("input", 2, answers[2])
    server.close_stage("input")
    down = server.broadcast("aggregate")
    assert set(down) == {0, 2}
    for c in (0, 2):
        server.receive("aggregate", c, clients[c].handle("aggregate", down[c]))
    server.close_stage("aggregate")
    assert server.reveal().contributors == (0, 2)
    np.testing.assert_array_equal(
        clients[0].level_sum, _expected_levels(plan, updates, weights, [0, 2])
    )


class _OffGridSite(HEClient):
    """A malicious site: after encoding honestly, it sets a bit above the top field of a
    slot (``slot_top``) or a level far above the grid (``level``)."""

    mode = "slot_top"

    def _encode_bfv(self):
        rows = super()._encode_bfv()
        plan = self.plan
        if self.mode == "slot_top":
            rows[0, 0] |= np.uint64(1) << np.uint64(plan.per_slot * plan.value_bits)
        else:
            rows[0, 0] = (rows[0, 0] & ~np.uint64((1 << plan.value_bits) - 1)) | np.uint64(900)
        return rows


@pytest.mark.parametrize("mode", ["slot_top", "level"])
def test_a_site_sending_values_off_the_grid_is_caught_by_the_decrypting_sites(mode):
    """Honest sites send the grid's bottom at full weight, so the forged value shows in the
    sum: bits above the top field, or a level of 900 > 3 x 255. Every decrypting site
    refuses the aggregate instead of applying a mean outside the public range."""
    config = HEConfig(clip=0.1, quant_bits=8, weight_bits=8, max_weight=10.0)
    plan = plan_for(config, n_clients=3, dim=40)
    keyring = HEKeyring.generate(plan)
    low = np.full(40, -0.1, dtype=np.float32)
    server = HEServer(round=1, clients=[0, 1, 2], dim=40, plan=plan)
    forger = type("Forger", (_OffGridSite,), {"mode": mode})
    clients = {
        c: (forger if c == 0 else HEClient)(
            client_id=c, round=1, update=low, weight=10.0, keyring=keyring, quant_seed=c
        )
        for c in range(3)
    }
    outcome = run_protocol(server, InProcessTransport(clients))
    assert all(client.aggregate is None for client in clients.values())
    # ... and the round produced nothing (over Flower the sites would otherwise be told an
    # aggregate they all refused was applied, and sit out every later round as stale)
    assert outcome.revealed is None and "no site accepted" in outcome.aborted
