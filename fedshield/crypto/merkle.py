"""A binary Merkle tree over SHA-256: one signature on the root commits to every leaf, and a
leaf is checked against the root with ``ceil(log2 m)`` hashes.

Building block: SecAgg+ signs one root per sender over what it dealt to each holder
(:mod:`fedshield.protocols.secagg.channels`). Leaves and inner nodes are hashed with distinct
prefixes (``0x00`` and ``0x01``, as RFC 6962 section 2.1 does), so no leaf can pass for a
node. The ``m`` leaves are padded with an empty-slot hash up to the next power of two, so a
path's length follows from ``m`` alone.
"""

from __future__ import annotations

import hashlib

from fedshield._validate import check_int

__all__ = ["HASH_BYTES", "depth", "leaf_hash", "path", "paths", "root", "root_from_path", "tree"]

HASH_BYTES = 32
_EMPTY = hashlib.sha256(b"\x02fedshield/merkle/empty").digest()


def leaf_hash(data: bytes) -> bytes:
    """The hash of one leaf's content."""
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def depth(count: int) -> int:
    """Hashes on the path of each of ``count`` leaves: ``ceil(log2 count)``."""
    check_int("count", count, low=1)
    return (count - 1).bit_length()


def tree(leaves: list[bytes]) -> list[list[bytes]]:
    """Every level of the tree over the leaf hashes, leaves first, root last (keep it to
    take paths later with :func:`path`)."""
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    level = [*leaves, *[_EMPTY] * ((1 << depth(len(leaves))) - len(leaves))]
    levels = [level]
    while len(level) > 1:
        level = [_node(level[i], level[i + 1]) for i in range(0, len(level), 2)]
        levels.append(level)
    return levels


def root(leaves: list[bytes]) -> bytes:
    """The root over ``leaves`` (each a :func:`leaf_hash`), in order."""
    return tree(leaves)[-1][0]


def path(levels: list[list[bytes]], index: int) -> bytes:
    """The sibling hashes from leaf ``index`` of a :func:`tree` up to its root, concatenated."""
    check_int("index", index, low=0, high=len(levels[0]) - 1)
    return b"".join(level[(index >> i) ^ 1] for i, level in enumerate(levels[:-1]))


def paths(leaves: list[bytes]) -> list[bytes]:
    """For each leaf, its :func:`path`."""
    levels = tree(leaves)
    return [path(levels, index) for index in range(len(leaves))]


def root_from_path(leaf: bytes, index: int, count: int, siblings: bytes) -> bytes:
    """The root that leaf ``index`` of ``count`` with ``siblings`` (from :func:`paths`) leads to;
    compare it with the signed root. Raises ``ValueError`` on a path of the wrong length or
    an index outside the tree."""
    if not 0 <= index < count or len(siblings) != depth(count) * HASH_BYTES:
        raise ValueError(f"no path of {len(siblings)} bytes to leaf {index} of {count}")
    node = leaf
    for i in range(depth(count)):
        sibling = siblings[i * HASH_BYTES : (i + 1) * HASH_BYTES]
        node = _node(sibling, node) if (index >> i) & 1 else _node(node, sibling)
    return node
