"""``secagg``: SecAgg+ secure aggregation with pairwise masks and Shamir dropout recovery.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
CCS 2017 (the four rounds, double masking); Bell et al., "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020 (masks and shares only along a random k-regular graph).

Threat model. Every site holds the federation's :class:`~fedshield.protocols.roster.Roster`
(site ids, Ed25519 identity keys, the smallest round) and signs its round keys with its
identity; clients accept only members, at least the roster's ``min_sites``, and keys whose
signature verifies. The server may be *malicious*: it may lie about who dropped out, send
different messages to different clients, withhold or reorder messages, and collude with up
to ``c`` clients (``SecAggConfig.colluders``, default ``t - 1``). It still learns nothing
about an honest client's update beyond the sum over the survivors: each client signs the one
survivor set ``U_3`` it is told at ``consistency`` (a subset of the ``U_2`` it masked against,
remembered), and reveals shares only for that set once a quorum ``max(t, floor((n + c) / 2)
+ 1)`` of its members signed it, so no two survivor sets can both be accepted and no
victim's self-mask seed and mask key are ever both revealed by honest clients. The neighbour
graph's seed is derived from the signed keys, so the server alone does not choose it (a
colluder answering last could still try keys until the graph suits it; the bound of ``c``
colluders in all holds whatever the graph). What a malicious
server can do: abort the round (withhold messages), and choose which sites to call dropped
before ``masked_input``. Dropouts: the round completes while every stage keeps at least
``t`` clients (and the roster's minimum), ``U_3`` has a quorum of signers and every needed
secret keeps ``t`` surviving holders; below that it raises
:class:`~fedshield.errors.SecAggAbort` and nothing is revealed. A quorum above ``t`` costs
dropout tolerance after ``share_keys``: none at n = 3 or 4 with the default, one at n = 5.
What leaks: the weighted sum of the survivors' quantized updates, their total weight, the
set of survivors and, under adaptive ranges (the default), per tensor how many survivors'
largest value fell in each power-of-two octave of its range (:mod:`fedshield.protocols.ranges`).
Clients that drop after sending their masked input are still counted. The round's public
parameters (the config and the ranges the server relays) are bound into every pairwise mask
and signature. Malicious clients: a client's own update must be finite (``NonFiniteValues``);
the server aborts a round whose unmasked sum lies outside what the survivors could send on
the grid (weights, levels, digits), so the decoded mean stays within the public range. Within
it a malicious client can still shift the sum (ring values that keep it in range cannot be
told from honest input: secure aggregation hides who sent what, so robust statistics over
single updates are impossible by design). Each client signs what it deals (its seed
commitment and one Merkle root over a commitment to every share,
:mod:`fedshield.protocols.secagg.dealing`): a revealed share that misses its commitment is
dropped and its holder recorded; inconsistent shares a dealer dealt are corrected by
Reed-Solomon decoding. Complaints are verifiable (:mod:`fedshield.protocols.secagg.channels`):
a complaint reveals the one receive key that opens the accused's blob, so the server drops
the sender of bad shares and a false accuser alike, and the round goes on. A client whose
own shares decode to nothing it committed to is proven a cheater and expelled
(:mod:`fedshield.protocols.secagg.expulsion`): the survivors that masked with it check the
proof and reveal their pairwise seeds with it, and the round completes without it (it
aborts if one of them then drops). A dropped client whose mask key cannot be rebuilt (too
few of its shares came back, say because it dealt blobs that did not open) leaves the sum
the same way, without a proof: no honest client revealed shares of its seed. A client
reveals a pairwise seed only after its own quorum-checked ``unmask`` (a session whose stage
failed refuses every later one). A survivor revealing a wrong seed there makes the sum fall
off the grid: the round aborts, and the server cannot tell who lied.

Stages (:class:`SecAggStage`): ``advertise_keys`` (two fresh X25519 public keys per client,
signed with its identity) →
``share_keys`` (Shamir shares of the self-mask seed and of the mask-agreement secret key, AES-GCM
encrypted to each neighbour, relayed by the server) → ``masked_input`` (the bit-packed masked
vector in Z_{2^b}) → ``consistency`` (each client's signature on the survivor set) →
``unmask`` (shares of survivors' self-mask seeds and of dropped clients' secret keys) →
``expel`` (only in a round with a proven cheater or a dropped client whose mask key cannot
be rebuilt: the pairwise seeds its neighbours share with it).

Legend: the paper's notation (Bonawitz et al., Figure 4) → our names.

- ``u``, ``v`` (users) → ``client_id``, or ``me`` and ``peer``; ``t`` → ``threshold``.
- ``(c_u^PK, c_u^SK)``, the key pair that agrees the share-encryption keys → ``channel_keys``;
  every client's ``c^PK`` as relayed by the server → ``channel_public_keys``; the agreed keys
  ``KA.agree(c_u^SK, r_{v,u}^PK)``, one direction each, where ``r_{v,u}`` is the receive key
  ``v`` made for ``u`` (``receive_keys``) → :func:`~fedshield.protocols.secagg.channels.share_key`.
- ``(s_u^PK, s_u^SK)``, the key pair that agrees the pairwise mask seeds ``s_{u,v}`` →
  ``mask_keys``; every client's ``s^PK`` as relayed → ``mask_public_keys``.
- ``b_u``, the self-mask seed → ``self_mask_seed``; ``PRG(b_u)`` → ``add_mask(y,
  self_mask_seed)``; ``PRG(s_{u,v})`` with its sign → :func:`add_pairwise_mask`.
- ``b_{u,v}`` and ``s^SK_{u,v}``, ``v``'s Shamir shares of ``b_u`` and ``s_u^SK`` →
  ``seed_shares`` and ``mask_key_shares`` (per owner on the server: ``self_mask_seed_shares``,
  ``mask_key_shares``); ``e_{u,v}``, the encrypted pair → a sealed share
  (:func:`~fedshield.crypto.keys.seal_share`).
- ``y_u``, the masked input → ``masked`` (one client), ``masked_sum`` (the server's sum).
- ``U_1`` (advertised keys) → ``advertised``; ``U_2`` (sent shares) →
  ``shared_keys_survivors``; ``U_3`` (sent a masked input) → ``masked_input_survivors``;
  ``U_2 - U_3`` → each client's own ``shared_keys_survivors - masked_input_survivors``;
  ``U_4`` (signed the survivor set) → the server's ``consistency_signatures``; ``U_5``
  (answered unmask) → the server's ``alive`` at reveal.
- ``N_G(u)``, ``u``'s neighbours in the SecAgg+ graph → ``neighbours`` (``graph`` on the
  server); a client with its neighbours hold its shares → ``holders``.
"""

from fedshield.protocols.secagg.client import SecAggClient
from fedshield.protocols.secagg.common import PROTOCOL_ID, STAGES, SecAggStage
from fedshield.protocols.secagg.config import SecAggConfig, neighbour_graph
from fedshield.protocols.secagg.server import SecAggServer

__all__ = [
    "PROTOCOL_ID",
    "STAGES",
    "SecAggClient",
    "SecAggConfig",
    "SecAggServer",
    "SecAggStage",
    "neighbour_graph",
]
