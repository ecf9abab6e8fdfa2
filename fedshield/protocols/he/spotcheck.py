"""Threshold ``he``'s aggregate check: before a site partially decrypts, it checks that the sum
it is shown is the sum of every contributor's committed ciphertexts, at random blocks.

Building block of :mod:`fedshield.protocols.he.threshold`. Each site commits (signed) to a
Merkle tree (:mod:`fedshield.crypto.merkle`) over its ciphertexts' coefficients in blocks of
:data:`BLOCK`, before any site's ciphertext is revealed. The server, which holds every
ciphertext, opens each contributor's tree at :data:`PER_CIPHERTEXT` blocks of every summed
ciphertext, at positions drawn from a hash of the sum and of every root (Fiat-Shamir): fixed
only once the sum is. A site recomputes the positions, checks each opening against its signed
root, and checks that the openings add up (mod each prime) to the sum's blocks.

What it stops: a sum that leaves a contributor out, or that is one site's ciphertext, differs
from the true sum in (almost) every block of its second polynomial (an honest ciphertext's is
uniformly random), so one checked block per ciphertext already catches it; the check opens
:data:`PER_CIPHERTEXT`. A sum altered in a few blocks only may pass, but it cannot single out
a site: an altered second polynomial multiplies the unknown key into every coefficient, and
the decryption comes out as noise. Cost: each site downloads ``n · PER_CIPHERTEXT`` blocks and
paths per ciphertext (about 9 KB per contributor at N = 8192), against ``n`` whole ciphertexts
(262 KB each) to recompute the sum.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

from fedshield.crypto import merkle
from fedshield.errors import ProtocolAbort, WrongShape

__all__ = [
    "BLOCK",
    "PER_CIPHERTEXT",
    "blocks",
    "check_sum",
    "commit",
    "open_blocks",
    "positions",
    "read_openings",
]

BLOCK = 64  # coefficients per Merkle leaf (512 bytes)
PER_CIPHERTEXT = 8  # blocks checked per summed ciphertext


def blocks(coefficients: np.ndarray) -> np.ndarray:
    """``(count, BLOCK)`` u64 view of ``(ciphertexts, 2, moduli, degree)`` coefficients, in
    order ciphertext, polynomial, modulus, block."""
    return np.ascontiguousarray(coefficients, "<u8").reshape(-1, BLOCK)


def commit(coefficients: np.ndarray) -> list[list[bytes]]:
    """The Merkle tree (every level) over a site's ciphertexts' coefficient blocks."""
    return merkle.tree([merkle.leaf_hash(row.tobytes()) for row in blocks(coefficients)])


def positions(
    round: int, params_id: bytes, roots: dict[int, bytes], total: np.ndarray
) -> np.ndarray:
    """The leaf indices to open: :data:`PER_CIPHERTEXT` per summed ciphertext, from SHAKE-256
    of the round, the parameters, every contributor's root and the sum itself."""
    count, polys, moduli, degree = total.shape
    per = polys * moduli * (degree // BLOCK)
    seed = hashlib.sha256(np.ascontiguousarray(total, "<u8").tobytes()).digest()
    head = struct.pack("<I", round) + params_id + seed
    head += b"".join(struct.pack("<I", site) + roots[site] for site in sorted(roots))
    draws = hashlib.shake_256(b"fedshield/threshold/spot" + head).digest(8 * count * PER_CIPHERTEXT)
    offsets = np.frombuffer(draws, "<u8").reshape(count, PER_CIPHERTEXT) % np.uint64(per)
    return (offsets + (np.arange(count, dtype=np.uint64) * np.uint64(per))[:, None]).reshape(-1)


def open_blocks(coefficients: np.ndarray, levels: list[list[bytes]], where: np.ndarray) -> bytes:
    """A contributor's blocks at ``where``, each followed by its Merkle path."""
    rows = blocks(coefficients)
    return b"".join(rows[i].tobytes() + merkle.path(levels, int(i)) for i in where)


def read_openings(
    blob: bytes | memoryview, root: bytes, where: np.ndarray, leaves: int
) -> np.ndarray:
    """The opened blocks ``(len(where), BLOCK)``, each checked against ``root``.

    Raises:
        WrongShape: the openings are not of the expected length.
        ProtocolAbort: a block does not lead to the contributor's signed root.
    """
    step = 8 * BLOCK + merkle.depth(leaves) * merkle.HASH_BYTES
    if len(blob) != step * len(where):
        raise WrongShape("the openings are not of the expected length")
    out = np.empty((len(where), BLOCK), np.uint64)
    for k, index in enumerate(where):
        chunk = bytes(blob[step * k : step * (k + 1)])
        block, path = chunk[: 8 * BLOCK], chunk[8 * BLOCK :]
        if merkle.root_from_path(merkle.leaf_hash(block), int(index), leaves, path) != root:
            raise ProtocolAbort("an opened block is not the contributor's committed one")
        out[k] = np.frombuffer(block, "<u8")
    return out


def check_sum(
    total: np.ndarray, where: np.ndarray, opened: list[np.ndarray], moduli: list[int]
) -> None:
    """Raise ProtocolAbort unless the opened blocks add up to the sum's, mod each prime."""
    _, _, n_moduli, degree = total.shape
    limb = (where // np.uint64(degree // BLOCK)) % np.uint64(n_moduli)
    q = np.array(moduli, np.uint64)[limb.astype(np.int64)][:, None]
    acc = np.zeros((len(where), BLOCK), np.uint64)
    for rows in opened:
        acc = (acc + rows % q) % q
    if not np.array_equal(acc, blocks(total)[where.astype(np.int64)]):
        raise ProtocolAbort(
            "the aggregate is not the sum of the contributors' committed ciphertexts: refused "
            "before any partial decryption"
        )
