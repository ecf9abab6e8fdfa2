"""``secagg``: SecAgg+ secure aggregation with pairwise masks and Shamir dropout recovery.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
CCS 2017 (the four rounds, double masking); Bell et al., "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020 (masks and shares only along a random k-regular graph).

Threat model. The server is honest-but-curious: it follows the protocol but tries to learn from
what it sees. It may collude with up to ``t - 1`` clients of any share group (a client and its
``k`` neighbours) and still learns nothing about an honest client's update beyond the sum over
the survivors. There is no consistency-check round, so a *malicious* server that lies about who
dropped out is not covered. Dropouts: any client may vanish at any stage; the round completes
while every stage keeps at least ``t`` clients and every needed secret keeps ``t`` surviving
holders; below that it raises :class:`~fedshield.errors.SecAggAbort` and nothing is revealed.
What leaks: the weighted sum of the survivors' quantized updates, their total weight, the
set of survivors and, under adaptive ranges (the default), per tensor how many survivors' largest
value fell in each power-of-two octave of its range (:mod:`fedshield.protocols.ranges`).
Clients that drop after sending their masked input are still counted. The round's public
parameters (the config and the ranges the server relays) are bound into every pairwise mask,
so clients told different parameters do not cancel each other's masks. A client's own update
must be finite (``NonFiniteValues``); the server aborts a round whose unmasked sum lies outside
what the survivors could send on the grid (weights, levels, digits), so the decoded mean
stays within the public range. Within it a malicious client can still shift the sum (ring
values that keep it in range cannot be told from honest input: secure aggregation hides who
sent what, so robust statistics over single updates are impossible by design). Forged
Shamir shares are corrected by Reed-Solomon decoding (the inconsistent owner-holder pairs
are recorded).
``min_clients`` (pinned by the engine to the Shamir threshold of the whole federation) keeps
a server from shrinking a round around one client.

Stages (:class:`SecAggStage`): ``advertise_keys`` (two fresh X25519 public keys per client) →
``share_keys`` (Shamir shares of the self-mask seed and of the mask-agreement secret key, AES-GCM
encrypted to each neighbour, relayed by the server) → ``masked_input`` (the bit-packed masked
vector in Z_{2^b}) → ``unmask`` (shares of survivors' self-mask seeds and of dropped clients'
secret keys). The paper's ConsistencyCheck round (its round 3) is not run.

Legend: the paper's notation (Bonawitz et al., Figure 4) → our names.

- ``u``, ``v`` (users) → ``client_id``, or ``me`` and ``peer``; ``t`` → ``threshold``.
- ``(c_u^PK, c_u^SK)``, the key pair that agrees the share-encryption keys → ``channel_keys``;
  every client's ``c^PK`` as relayed by the server → ``channel_public_keys``; the agreed keys
  ``KA.agree(c_u^SK, c_v^PK)`` → ``channel_secrets``.
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
  ``U_2 - U_3`` → ``dropped`` in the unmask request; ``U_5`` (answered unmask) → the server's
  ``alive`` at reveal. ``U_4`` (ConsistencyCheck) has no counterpart.
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
