import contextlib
import itertools
import secrets
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield.crypto import shamir
from fedshield.crypto.shamir import PRIME, SHARE_BYTES, Share, reconstruct, split
from fedshield.errors import InvalidShare, NotEnoughShares


def test_every_t_subset_reconstructs_and_every_smaller_one_refuses():
    secret = secrets.token_bytes(32)
    shares = split(secret, threshold=3, xs=[1, 2, 3, 4, 5])
    for size in range(1, 6):
        for subset in itertools.combinations(shares, size):
            if size >= 3:
                assert reconstruct(list(subset)) == secret
            else:
                with pytest.raises(NotEnoughShares):
                    reconstruct(list(subset))


def test_known_vector_degree_one_polynomial():
    # f(x) = 7 + 5x: shares (1, 12) and (2, 17) give f(0) = 7.
    shares = [Share(1, 12, 2, 1), Share(2, 17, 2, 1)]
    assert reconstruct(shares) == bytes([7])


def test_t_minus_one_shares_are_consistent_with_any_secret():
    # Perfect secrecy, checked on the algebra: for t=2, one share (x, y) fits the line through
    # (0, s) and (x, y) for every s, so it pins nothing down. Two different secrets can yield the
    # very same single share.
    share = split(b"\x01", threshold=2, xs=[1, 2])[0]
    for other in (b"\x00", b"\xff"):
        slope = (share.y - int.from_bytes(other, "little")) % PRIME
        assert (int.from_bytes(other, "little") + slope * share.x) % PRIME == share.y


@settings(max_examples=30, deadline=None)
@given(secret=st.binary(min_size=1, max_size=64), n=st.integers(1, 9), data=st.data())
def test_round_trip_through_bytes(secret, n, data):
    t = data.draw(st.integers(1, n))
    shares = split(secret, threshold=t, xs=list(range(1, n + 1)))
    parsed = [Share.from_bytes(s.to_bytes()) for s in shares]
    assert all(len(s.to_bytes()) == SHARE_BYTES for s in shares)
    chosen = data.draw(st.permutations(parsed))[:t]
    assert reconstruct(list(chosen)) == secret


def test_tampered_share_gives_a_different_secret_or_an_error():
    secret = secrets.token_bytes(32)
    shares = split(secret, threshold=2, xs=[1, 2])
    bad = Share(shares[0].x, (shares[0].y + 1) % PRIME, 2, 32)
    with contextlib.suppress(InvalidShare):
        assert reconstruct([bad, shares[1]]) != secret


def test_validation_branches():
    with pytest.raises(ValueError):
        split(b"", threshold=1, xs=[1])
    with pytest.raises(ValueError):
        split(bytes(65), threshold=1, xs=[1])
    with pytest.raises(ValueError):
        split(b"a", threshold=3, xs=[1, 2])
    with pytest.raises(ValueError):
        split(b"a", threshold=1, xs=[1, 1])
    with pytest.raises(ValueError):
        split(b"a", threshold=1, xs=[0])
    shares = split(b"ab", threshold=2, xs=[1, 2, 3])
    with pytest.raises(InvalidShare):
        reconstruct([shares[0], shares[0]])
    with pytest.raises(InvalidShare):
        reconstruct([shares[0], Share(2, 5, 3, 2)])
    with pytest.raises(InvalidShare):
        Share.from_bytes(b"short")
    with pytest.raises(InvalidShare):
        Share(1, PRIME, 2, 2)
    with pytest.raises(NotEnoughShares):
        reconstruct([])


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_decode_corrects_and_names_up_to_half_the_spare_shares_forged(data):
    t = data.draw(st.integers(1, 8), label="threshold")
    m = data.draw(st.integers(t, 20), label="shares")
    secret = data.draw(st.binary(min_size=1, max_size=64), label="secret")
    xs = data.draw(st.lists(st.integers(1, 500), min_size=m, max_size=m, unique=True))
    shares = shamir.split(secret, threshold=t, xs=xs)
    bad = data.draw(st.sets(st.integers(0, m - 1), max_size=(m - t) // 2), label="forged")
    forged = [
        replace(s, y=(s.y + data.draw(st.integers(1, shamir.PRIME - 1))) % shamir.PRIME)
        if i in bad
        else s
        for i, s in enumerate(shares)
    ]
    got, named = shamir.decode(forged)
    assert got == secret
    assert sorted(named) == sorted(shares[i].x for i in bad)


def test_decode_refuses_what_it_cannot_correct():
    shares = shamir.split(b"secret", threshold=3, xs=[1, 2, 3, 4])  # corrects 0 forgeries
    forged = [replace(shares[0], y=(shares[0].y + 1) % shamir.PRIME), *shares[1:]]
    with pytest.raises(InvalidShare, match="can correct"):
        shamir.decode(forged)
    with pytest.raises(NotEnoughShares):
        shamir.decode(shares[:2])
