"""The ``expel`` stage: taking out of the sum a client proven to have dealt garbage shares.
The protocol, its threat model and the legend: :mod:`fedshield.protocols.secagg`.

At ``unmask`` every revealed share is checked against the commitment its dealer signed
(:mod:`~fedshield.protocols.secagg.dealing`), so the shares the server keeps are the ones the
dealer dealt. When ``t`` or more of them decode to no secret matching the dealer's signed
commitment (its self-mask seed, for a survivor) or its signed mask public key (for a client
that dropped), the dealer cheated: an honest dealer's shares always do. Without that secret
its masks cannot leave the sum, so the server takes the cheater's masked input out and asks
each survivor that masked with it for their pairwise mask seed, sending the proof: the
openings with their Merkle paths, and the dealer's signature. A client checks the proof and
reveals only the seed it shares with the proven cheater, which the cheater itself knows:
nothing about an honest client leaks, and a server without a real proof (an honest dealer's
shares always decode) gets nothing. The honest clients' round completes without the
cheater, as if it had dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedshield import wire
from fedshield.crypto import shamir
from fedshield.errors import InvalidMessage, SecAggAbort, WrongShape
from fedshield.protocols.secagg.channels import SEALED_SHARE_BYTES
from fedshield.protocols.secagg.common import ids, pairwise_seed
from fedshield.protocols.secagg.dealing import (
    DEAL_LABEL,
    Dealt,
    deal_statement,
    parse_relayed,
    relayed_fields,
    share_commitment,
)
from fedshield.protocols.secagg.recovery import decode_secret, masked_with, secret_check

if TYPE_CHECKING:
    from fedshield.protocols.secagg.client import SecAggClient
    from fedshield.protocols.secagg.server import SecAggServer

__all__ = ["proofs_for", "reveal_pair_seeds"]


def proofs_for(server: SecAggServer) -> dict[int, list]:
    """The ``expel`` message's fields for each survivor that masked with a proven cheater:
    per cheater, the shares it dealt that the server holds, each with what proves the
    cheater signed it."""
    s, out = server, {}
    for i in sorted(s.alive & set(s.masked)):
        cheaters = [u for u in sorted(s.cheaters) if i in masked_with(s, u)]
        if cheaters:
            out[i] = _proof_fields(s, cheaters)
    return out


def _proof_fields(s: SecAggServer, cheaters: list[int]) -> list:
    counts, holders, shares, deals = [], [], [], []
    for u in cheaters:
        store = s.self_mask_seed_shares if s.cheaters[u] == "seed" else s.mask_key_shares
        held = store[u]
        counts.append(len(held))
        holders += [share.x - 1 for share in held]
        shares += [share.to_bytes() for share in held]
        deals += [s.mailbox[share.x - 1][u] for share in held]
    return [ids(cheaters), np.array(counts, dtype=np.uint32), np.array(holders, dtype=np.uint32),
            b"".join(shares), *relayed_fields(deals)]  # fmt: skip


def reveal_pair_seeds(client: SecAggClient, message: wire.Message):
    """``(cheaters, the pairwise mask seed with each)``, once each proof holds.

    Raises:
        SecAggAbort: a proof does not hold, or names a client this one did not mask with.
    """
    message.require_fields(10)
    cheaters = message.array(0, dtype="<u4").tolist()
    counts = message.array(1, dtype="<u4", shape=(len(cheaters),)).tolist()
    holders = message.array(2, dtype="<u4", shape=(sum(counts),)).tolist()
    try:
        shares = [shamir.Share.from_bytes(share) for share in message.chunks(
            3, size=shamir.SHARE_BYTES, count=len(holders))]  # fmt: skip
    except ValueError as exc:
        raise WrongShape(f"a malformed share in a proof ({exc})") from None
    deals = [dealt for _, dealt in parse_relayed(message, 4, len(holders), SEALED_SHARE_BYTES)]
    if not cheaters or len(set(cheaters)) != len(cheaters):
        raise SecAggAbort(f"client {client.client_id}: no cheater, or one named twice")
    seeds, at = [], 0
    for u, count in zip(cheaters, counts, strict=True):
        _check_proof(client, u, holders[at : at + count], shares[at : at + count],
                     deals[at : at + count])  # fmt: skip
        at += count
        seeds.append(pairwise_seed(client.mask_keys, client.mask_public_keys[u],
                                   round=client.round, me=client.client_id, peer=u,
                                   params=client.params))  # fmt: skip
    return cheaters, seeds


def _check_proof(c: SecAggClient, u: int, holders, shares, deals: list[Dealt]) -> None:
    """Return if ``holders``' ``shares`` of ``u``'s secret, each under ``u``'s signed
    commitment, decode to no secret ``u`` committed to; else raise :class:`SecAggAbort`."""
    me = c.client_id
    if u not in c.neighbours or u not in c.shared_keys_survivors or u in c.accused:
        raise SecAggAbort(f"client {me}: asked for its mask with {u}, which it did not mask with")
    secret = "seed" if u in c.masked_input_survivors else "key"
    if len(set(holders)) != len(holders) or len(holders) < c.threshold:
        raise SecAggAbort(f"client {me}: a proof against {u} needs {c.threshold} distinct shares")
    try:
        roots = {dealt.root(h) for h, dealt in zip(holders, deals, strict=True)}
    except ValueError:
        roots = set()
    signed = {(dealt.seed_commitment, dealt.signature) for dealt in deals}
    if len(roots) != 1 or len(signed) != 1:
        raise SecAggAbort(f"client {me}: the proof against {u} is not one signed deal")
    (seed_commitment, signature), root = signed.pop(), roots.pop()
    try:
        statement = deal_statement(c.round, c.run_binding, u, seed_commitment, root)
        c.roster.verify(u, signature, DEAL_LABEL, statement)
    except InvalidMessage as exc:
        raise SecAggAbort(f"client {me}: the proof against {u}: {exc}") from None
    for h, share, dealt in zip(holders, shares, deals, strict=True):
        opened = share_commitment(share, round=c.round, owner=u, holder=h, secret=secret)
        if (share.x, share.threshold, share.secret_len) != (h + 1, c.threshold, 32) or (
            opened != dealt.commitment(secret)
        ):
            raise SecAggAbort(f"client {me}: the proof against {u} holds a share it never dealt")
    check = secret_check(secret, owner=u, round=c.round, seed_commitment=seed_commitment,
                         mask_public_key=c.mask_public_keys[u])  # fmt: skip
    try:
        decode_secret(shares, check, threshold=c.threshold)
    except SecAggAbort:
        return  # proven: an honest dealer's shares always decode to what it committed to
    raise SecAggAbort(f"client {me}: the server's proof that client {u} cheated does not hold")
