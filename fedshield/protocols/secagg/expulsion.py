"""The ``expel`` stage: taking out of the sum the masks that no rebuilt secret can remove.
The protocol, its threat model and the legend: :mod:`fedshield.protocols.secagg`.

Two kinds of client need it, and the stage runs only when one exists:

- *A proven cheater among the survivors.* At ``unmask`` every revealed share is checked
  against the commitment its dealer signed (:mod:`~fedshield.protocols.secagg.dealing`), so
  the shares the server keeps are the ones the dealer dealt. When ``t`` or more of them
  decode to no seed matching the dealer's signed commitment, the dealer cheated (an honest
  dealer's shares always do). The server takes its masked input out and sends each survivor
  that masked with it the proof: the openings with their Merkle paths, and the dealer's
  signature. The proof is needed because honest clients revealed shares of every
  survivor's seed: without it, a server could claim an honest survivor cheated and collect
  the last masks hiding its input.
- *A dropped client whose mask key cannot be rebuilt*: fewer than ``t`` of its shares came
  back (its holders dropped, or the blobs it dealt did not open), or they decode to no key
  matching its signed public key. No proof is needed: it is outside the survivor set every
  revealing client signed, so no honest client revealed shares of its seed, and its input
  stays hidden by its self mask (revealing pairwise seeds with it is what rebuilding its
  key would have done).

Each survivor asked reveals only its pairwise seed with those clients, and the round
completes without them; it aborts (revealing nothing more) if one of those survivors drops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedshield import wire
from fedshield.crypto import shamir
from fedshield.errors import SecAggAbort
from fedshield.protocols.secagg.channels import SEALED_SHARE_BYTES
from fedshield.protocols.secagg.common import ids, pairwise_seed
from fedshield.protocols.secagg.dealing import (
    Dealt,
    Secret,
    opens,
    parse_relayed,
    relayed_fields,
)
from fedshield.protocols.secagg.recovery import decode_secret, masked_with, secret_check

if TYPE_CHECKING:
    from fedshield.protocols.secagg.client import SecAggClient
    from fedshield.protocols.secagg.server import SecAggServer

__all__ = ["proofs_for", "require_neighbours", "reveal_pair_seeds"]


def require_neighbours(server: SecAggServer, stage: str) -> None:
    """Before ``expel`` and at its close: every survivor that masked with an unkeyed client
    must still be there (a pairwise mask nobody reveals would leave the sum garbage).

    Raises:
        SecAggAbort: one of them dropped.
    """
    s = server
    gone = sorted({i for u in s.unkeyed for i in masked_with(s, u)} - s.alive)
    if gone:
        raise SecAggAbort(
            f"round {s.round}: clients {gone} masked with {sorted(s.unkeyed)} and are gone at "
            f"'{stage}': those masks cannot leave the sum"
        )


def proofs_for(server: SecAggServer) -> dict[int, list]:
    """The ``expel`` message's fields for each survivor that masked with an unkeyed client:
    per such client, the shares of its seed the server holds with what proves it dealt them
    (a proven cheater among the survivors), or none (a dropped client)."""
    s, out = server, {}
    for i in sorted(s.alive):
        peers = [u for u in sorted(s.unkeyed) if i in masked_with(s, u)]
        if peers:
            out[i] = _proof_fields(s, peers)
    return out


def _proof_fields(s: SecAggServer, peers: list[int]) -> list:
    counts, holders, shares, deals = [], [], [], []
    for u in peers:
        held = s.self_mask_seed_shares[u] if s.cheaters.get(u) == Secret.SEED else []
        counts.append(len(held))
        holders += [share.x - 1 for share in held]
        shares += [share.to_bytes() for share in held]
        deals += [s.mailbox[share.x - 1][u] for share in held]
    return [ids(peers), np.array(counts, dtype=np.uint32), np.array(holders, dtype=np.uint32),
            b"".join(shares), *relayed_fields(deals)]  # fmt: skip


def reveal_pair_seeds(
    client: SecAggClient, message: wire.Message
) -> tuple[list[int], list[bytes]]:  # fmt: skip
    """``(peers, the pairwise mask seed with each)``: each a client this one masked with
    that dropped (in the survivor set it signed), or a survivor proven to have cheated.

    Raises:
        SecAggAbort: a proof does not hold, or names a client this one did not mask with.
    """
    message.require_fields(10)
    peers = message.array(0, dtype="<u4").tolist()
    counts = message.array(1, dtype="<u4", shape=(len(peers),)).tolist()
    holders = message.array(2, dtype="<u4", shape=(sum(counts),)).tolist()
    shares = [shamir.Share.from_bytes(share) for share in message.chunks(
        3, size=shamir.SHARE_BYTES, count=len(holders))]  # fmt: skip
    deals = [dealt for _, dealt in parse_relayed(message, 4, len(holders), SEALED_SHARE_BYTES)]
    if not peers or len(set(peers)) != len(peers):
        raise SecAggAbort(f"client {client.client_id}: no client named, or one named twice")
    # Only the peers this client masked with are named to it; on a sparse graph the server
    # may expel survivors outside its neighbourhood unseen: count them as expelled too.
    seen = set(client.neighbours) | {client.client_id}
    left = len((set(client.masked_input_survivors) & seen) - set(peers))
    if left < client.minimum:
        raise SecAggAbort(
            f"client {client.client_id}: expelling {peers} could leave {left} inputs in the "
            f"sum, fewer than the {client.minimum} a round needs"
        )
    seeds, at = [], 0
    for u, count in zip(peers, counts, strict=True):
        _check_masked_with(client, u)
        if u in client.masked_input_survivors:  # shares of its seed were revealed: proof
            _check_proof(client, u, holders[at : at + count], shares[at : at + count],
                         deals[at : at + count])  # fmt: skip
        at += count
        seeds.append(pairwise_seed(client.mask_keys, client.mask_public_keys[u],
                                   round=client.round, me=client.client_id, peer=u,
                                   params=client.params))  # fmt: skip
    return peers, seeds


def _check_masked_with(c: SecAggClient, u: int) -> None:
    if u not in c.neighbours or u not in c.shared_keys_survivors or u in c.accused:
        raise SecAggAbort(
            f"client {c.client_id}: asked for its mask with {u}, which it did not mask with"
        )


def _check_proof(c: SecAggClient, u: int, holders, shares, deals: list[Dealt]) -> None:
    """Return if ``holders``' ``shares`` of survivor ``u``'s seed, each what ``u`` dealt and
    signed, decode to no seed ``u`` committed to; else raise :class:`SecAggAbort`."""
    me, t = c.client_id, c.threshold
    if len(set(holders)) != len(holders) or len(holders) < t:
        raise SecAggAbort(f"client {me}: a proof against {u} needs {t} distinct shares")
    one_deal = len({(dealt.seed_commitment, dealt.signature) for dealt in deals}) == 1
    if not one_deal or not all(
        dealt.signed(c.roster, round=c.round, session=c.run_binding, sender=u, holder=h)
        and opens(share, dealt.commitment(Secret.SEED), round=c.round, owner=u, holder=h,
                  secret=Secret.SEED, threshold=t)
        for h, share, dealt in zip(holders, shares, deals, strict=True)
    ):  # fmt: skip
        raise SecAggAbort(f"client {me}: the proof against {u} is not shares {u} dealt and signed")
    check = secret_check(Secret.SEED, owner=u, round=c.round,
                         committed=deals[0].seed_commitment)  # fmt: skip
    try:
        decode_secret(shares, check, threshold=t)
    except SecAggAbort:
        return  # proven: an honest dealer's shares always decode to what it committed to
    raise SecAggAbort(f"client {me}: the server's proof that client {u} cheated does not hold")
