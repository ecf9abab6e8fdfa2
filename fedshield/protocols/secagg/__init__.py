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
What leaks: the weighted sum of the survivors' quantized updates, their total weight, and the
set of survivors. Clients that drop after sending their masked input are still counted.

Stages: ``advertise_keys`` (two fresh X25519 public keys per client) → ``share_keys`` (Shamir
shares of the self-mask seed and of the mask-agreement secret key, AES-GCM encrypted to each
neighbour, relayed by the server) → ``masked_input`` (the bit-packed masked vector in
Z_{2^b}) → ``unmask`` (shares of survivors' self-mask seeds and of dropped clients' secret keys).
"""

from fedshield.protocols.secagg.client import SecAggClient
from fedshield.protocols.secagg.common import PROTOCOL_ID, STAGES
from fedshield.protocols.secagg.config import SecAggConfig, neighbour_graph
from fedshield.protocols.secagg.server import SecAggServer

__all__ = [
    "PROTOCOL_ID",
    "STAGES",
    "SecAggClient",
    "SecAggConfig",
    "SecAggServer",
    "neighbour_graph",
]
