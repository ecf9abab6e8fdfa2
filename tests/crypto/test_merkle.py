"""The Merkle tree that SecAgg+ senders sign one root of: every leaf's path leads to the
root, and any changed leaf, index, sibling or length does not."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedshield.crypto import merkle


def _leaves(count: int) -> list[bytes]:
    return [merkle.leaf_hash(bytes([i]) * 7) for i in range(count)]


@pytest.mark.parametrize("count", range(1, 10))
def test_every_leaf_path_leads_to_the_root(count):
    leaves = _leaves(count)
    root = merkle.root(leaves)
    for index, path in enumerate(merkle.paths(leaves)):
        assert len(path) == merkle.depth(count) * merkle.HASH_BYTES
        assert merkle.root_from_path(leaves[index], index, count, path) == root


@given(count=st.integers(2, 12), data=st.data())
def test_a_changed_leaf_index_or_sibling_misses_the_root(count, data):
    leaves = _leaves(count)
    root, paths = merkle.root(leaves), merkle.paths(leaves)
    index = data.draw(st.integers(0, count - 1))
    other = data.draw(st.integers(0, count - 1).filter(lambda i: i != index))
    path = paths[index]
    assert merkle.root_from_path(leaves[other], index, count, path) != root
    assert merkle.root_from_path(leaves[index], other, count, path) != root
    flipped = bytes([path[0] ^ 1]) + path[1:]
    assert merkle.root_from_path(leaves[index], index, count, flipped) != root


def test_a_leaf_cannot_pass_for_an_inner_node():
    """Leaves and nodes hash under distinct prefixes (RFC 6962): a two-leaf tree's root is
    not the hash of a leaf holding the two leaf hashes."""
    leaves = _leaves(2)
    assert merkle.leaf_hash(leaves[0] + leaves[1]) != merkle.root(leaves)


def test_paths_of_the_wrong_length_or_outside_the_tree_raise():
    leaves = _leaves(5)
    path = merkle.paths(leaves)[0]
    with pytest.raises(ValueError, match="no path"):
        merkle.root_from_path(leaves[0], 0, 5, path[:-1])
    with pytest.raises(ValueError, match="no path"):
        merkle.root_from_path(leaves[0], 5, 5, path)
    with pytest.raises(ValueError, match="at least one leaf"):
        merkle.root([])
