"""Multiparty BFV with the real SEAL objects: the sum decrypts exactly at the largest n with every
value at its largest, no strict subset of key shares decrypts anything, the measured noise is
inside the documented bound, and the flooding is uniform, CSPRNG-drawn and within range."""

import os

import numpy as np
import pytest
import tenseal.sealapi as sa
from scipy import stats

from fedshield.crypto import threshold
from fedshield.crypto.seal import SealIO
from fedshield.crypto.seal_codec import read_ciphertext, read_plaintext
from fedshield.protocols.he.params import THRESHOLD_MAX_CLIENTS, HEConfig, plan_for

SEED = b"\x07" * 32


def _federation(n: int):
    plan = plan_for(HEConfig(keys="threshold"), n_clients=n, dim=1)
    context = plan.context()
    keys = [threshold.ThresholdKeys(SealIO(context), seed=SEED, flood_bits=plan.flood_bits)
            for _ in range(n)]  # fmt: skip
    shares = [k.public_share() for k in keys]
    for k in keys:
        k.install(shares)
    return plan, context, keys


def _encrypt(keys, context, slots):
    plaintext = sa.Plaintext()
    sa.BatchEncoder(context).encode([int(v) for v in slots], plaintext)
    return keys.encrypt(plaintext), plaintext


def _sum(context, cts):
    total, evaluator = cts[0], sa.Evaluator(context)  # adds into the first
    for ct in cts[1:]:
        evaluator.add_inplace(total, ct)
    return total


def _decode(keys, context, ct, partials):
    moduli = keys[0].data_moduli
    members = read_ciphertext(keys[0].io.dump(ct))
    combined = sa.Ciphertext()
    keys[0].io.load_object(combined, threshold.combine(members, partials, moduli))
    plaintext = sa.Plaintext()
    sa.Decryptor(context, keys[0].secret_key).decrypt(combined, plaintext)
    return np.array(sa.BatchEncoder(context).decode_uint64(plaintext), np.uint64)


@pytest.fixture(scope="module")
def largest():
    return _federation(THRESHOLD_MAX_CLIENTS)


def test_exact_sum_at_the_largest_n_with_every_value_at_its_largest(largest):
    plan, context, keys = largest
    n = plan.n_clients
    top = ((1 << (plan.per_slot * plan.value_bits)) - 1) // n  # what n honest sites may sum to
    cts = [_encrypt(k, context, [top] * plan.slots)[0] for k in keys]
    total = _sum(context, cts)
    members = read_ciphertext(keys[0].io.dump(total))
    partials = threshold.sum_public_shares([k.partial(members) for k in keys], keys[0].data_moduli)
    assert (_decode(keys, context, total, partials) == top * n).all()


def test_measured_noise_is_inside_the_documented_bound(largest):
    """The noise of the sum of n fresh encryptions, with the collective key assembled here
    (only a test can): under half of noise_bound(n), for the flooding rule's sake."""
    plan, context, keys = largest
    n = plan.n_clients
    rng = np.random.default_rng(0)
    pairs = [_encrypt(k, context, rng.integers(0, 2, plan.slots)) for k in keys]
    total = _sum(context, [ct for ct, _ in pairs])
    members = read_ciphertext(keys[0].io.dump(total))
    products = threshold.sum_public_shares([k.product(members) for k in keys], keys[0].data_moduli)
    q0, q1 = keys[0].data_moduli
    q, t = q0 * q1, context.first_context_data().parms().plain_modulus().value()
    message = sum(read_plaintext(keys[0].io.dump(p)).data.astype(object) for _, p in pairs)
    d0 = (members.data[0, 0].astype(object) + products[0].astype(object)) % q0
    d1 = (members.data[0, 1].astype(object) + products[1].astype(object)) % q1
    d = (d0 + q0 * (((d1 - d0) * pow(q0, -1, q1)) % q1)) % q  # CRT
    padded = np.zeros(plan.poly_degree, dtype=object)
    padded[: len(message)] = message
    noise = (d - (padded * q + t // 2) // t) % q
    noise = np.where(noise > q // 2, noise - q, noise)
    worst = int(np.max(np.abs(noise)))
    print(f"n = {n}: largest noise {worst} (bound {threshold.noise_bound(n)})")
    assert worst < threshold.noise_bound(n) // 2


def test_no_strict_subset_of_shares_decrypts_a_sum_or_a_single_ciphertext():
    plan, context, keys = _federation(4)
    rng = np.random.default_rng(1)
    values = [rng.integers(0, 1000, plan.slots) for _ in keys]
    cts = [_encrypt(k, context, v)[0] for k, v in zip(keys, values, strict=True)]
    moduli = keys[0].data_moduli
    total = _sum(context, cts)
    members = read_ciphertext(keys[0].io.dump(total))
    partials = [k.partial(members) for k in keys]
    everyone = _decode(keys, context, total, threshold.sum_public_shares(partials, moduli))
    assert (everyone == np.sum(values, axis=0)).all()
    for missing in range(len(keys)):
        some = [p for i, p in enumerate(partials) if i != missing]
        got = _decode(keys, context, total, threshold.sum_public_shares(some, moduli))
        assert (got == np.sum(values, axis=0)).sum() == 0
    # the server with three of four sites against site 3's own ciphertext
    single = read_ciphertext(keys[0].io.dump(cts[3]))
    colluders = threshold.sum_public_shares([k.partial(single) for k in keys[:3]], moduli)
    assert (_decode(keys, context, cts[3], colluders) == values[3]).sum() == 0


def test_a_zero_second_polynomial_is_refused():
    _, context, keys = _federation(2)
    members = read_ciphertext(keys[0].io.dump(_encrypt(keys[0], context, [1])[0]))
    members.data[1] = 0
    with pytest.raises(Exception, match="zero second polynomial"):
        keys[0].partial(members)


def test_flooding_is_uniform_in_range_and_drawn_from_the_os_csprng(monkeypatch):
    moduli = [1152921504606748673, 1152921504606830593]
    bits = 63
    calls = []
    real = os.urandom

    def spy(size):
        calls.append(size)
        return real(size)

    monkeypatch.setattr(os, "urandom", spy)
    zero = np.zeros((2, 8192), np.uint64)
    first, second = threshold.flood(zero, moduli, bits), threshold.flood(zero, moduli, bits)
    assert calls == [8 * 8192] * 2  # a 64-bit word per coefficient, from os.urandom
    _check_uniform(first, moduli, bits)
    assert not np.array_equal(first, second)
    calls.clear()
    _check_uniform(threshold.flood(zero, moduli, 67), moduli, 67)  # two words: 68 bits
    assert calls == [16 * 8192]


def _check_uniform(flooded: np.ndarray, moduli: list[int], bits: int) -> None:
    """The flooding integers (recovered by CRT) lie in [-2^bits, 2^bits), uniformly."""
    q0, q1 = moduli
    q = q0 * q1
    d0, d1 = flooded[0].astype(object), flooded[1].astype(object)
    value = (d0 + q0 * (((d1 - d0) * pow(q0, -1, q1)) % q1)) % q  # the same integer mod each
    value = np.where(value > q // 2, value - q, value)
    assert value.min() >= -(2**bits) and value.max() < 2**bits
    buckets = np.array(((value + 2**bits) >> (bits - 3)).tolist())  # 16 equal ranges
    counts = np.bincount(buckets, minlength=16)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_the_flooding_rule_keeps_the_statistical_distance_under_2_to_the_minus_40():
    for n in (2, 3, 10, THRESHOLD_MAX_CLIENTS):
        plan = plan_for(HEConfig(keys="threshold"), n_clients=n, dim=1)
        bound = plan.poly_degree * threshold.noise_bound(n) / 2 ** (plan.flood_bits + 1)
        assert bound <= 2.0**-40
        # and the sum still decrypts: n floods plus the noise stay under q / (2 t) > 2^(118 - pb)
        assert n * 2**plan.flood_bits + threshold.noise_bound(n) < 2 ** (118 - plan.plain_bits)


def test_any_t_shamir_shares_rebuild_the_key_and_t_minus_1_decrypt_nothing():
    """t-of-n: four sites' key shares, each Shamir-shared at threshold 3 and summed per
    holder; any three holders' Lagrange-weighted partials decrypt the sum, two do not."""
    plan, context, keys = _federation(4)
    moduli, points = keys[0].data_moduli, [1, 2, 3, 4]
    dealt = [threshold.split_share(k.additive_share(), moduli, 3, points) for k in keys]
    held = {x: threshold.sum_public_shares([d[x] for d in dealt], moduli) for x in points}
    rng = np.random.default_rng(2)
    values = [rng.integers(0, 1000, plan.slots) for _ in keys]
    total = _sum(context, [_encrypt(k, context, v)[0] for k, v in zip(keys, values, strict=True)])
    members = read_ciphertext(keys[0].io.dump(total))
    for decrypting in ([1, 2, 3], [1, 3, 4], [2, 4]):
        partials = []
        for x in decrypting:
            keys[x - 1].use_decryption_share(
                threshold.lagrange_share(held[x], x, decrypting, moduli)
            )
            partials.append(keys[x - 1].partial(members))
        got = _decode(keys, context, total, threshold.sum_public_shares(partials, moduli))
        matches = (got == np.sum(values, axis=0)).sum()
        assert matches == (plan.slots if len(decrypting) >= 3 else 0), decrypting
