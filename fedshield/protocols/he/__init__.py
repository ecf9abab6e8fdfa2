"""``he``: packed homomorphic aggregation (SEAL through ``tenseal.sealapi``). The server adds
ciphertexts it cannot read and sends the encrypted sum back; the sites decrypt it.

Threat model. The server is honest-but-curious: it sees ciphertexts, their sizes and who sent
them, and it adds them; it never holds the secret key, so it learns nothing of any update nor
of the aggregate. The key distribution (:mod:`fedshield.protocols.he.keys`) holds against a
malicious server too: the key holder seals the key only to roster members whose identity signed
their transport key, and a site installs only a key sealed under the key holder's signed
transport key, so the server can neither obtain the key nor make a site use one of its own.
Every site holds the same secret key, so **a server colluding with any one site can decrypt every
site's update**, exactly as in NVIDIA FLARE's HE; use ``secagg``, or threshold keys
(``HEConfig(keys="threshold")``, ``--he-keys threshold``), where that matters: each site then
holds a key share, and only ``threshold`` of them (every site by default) decrypt the sum
(its own threat model: :mod:`fedshield.protocols.he.threshold`). Ciphertexts
carry no integrity: a site (or the network, without TLS) can send a well-formed but wrong
ciphertext; the server checks only that each is well-formed and under the round's parameters.
The decrypting sites refuse a sum that honest sites on the grid could not have produced (bits
above a slot's top field, a level, weight digit, weight or count out of range), so a wrong
ciphertext moves the mean at most within the public range (BFV; CKKS sums carry no such
check). Under adaptive ranges (the default) each site adds the range statistic
(:mod:`fedshield.protocols.ranges`) to its ciphertexts; the sites decrypt it and move the
ranges themselves, so the server chooses nothing. Dropouts: any number; the sum is over the
sites whose ciphertexts arrived (``contributors``, which the server learns), and a site that
misses the ``aggregate`` stage does not get this round's result (over Flower it then sits out:
its model would be stale).

Encoding. BFV (default): updates are weighted (``weighting``: scaled by the site's weight
fraction before quantization, or levels times its integer weight), clipped and stochastically
quantized (the shared-range kernel), and ``per_slot`` values are packed into each of the 4096
slots of a ciphertext at ``value_bits`` apart, so the sum of n sites never carries (parameters
and the error of each weighting: :mod:`fedshield.protocols.he.params`). The integer weight
follows as ``weight_digits`` more values (then, with fraction weighting, a count of sites, which
each site checks against the server's list of contributors). Ciphertexts are symmetric and
seeded (33 KB per 4096 slots). CKKS (``scheme="ckks"``): float updates times
``weight / max_weight``, one value per slot, no quantization. Large updates are encrypted,
added and decrypted by one forked worker per core (:mod:`fedshield.protocols.he.forked`); the
server's workers each own a range of ciphertexts and add a site's part only once every worker has
parsed and checked its own part of that site's message.

Stages: ``input`` (each site: its ciphertexts) → ``aggregate`` (the server: the summed
ciphertexts; each site decrypts them into :attr:`ClientSession.aggregate`).
"""

from fedshield.protocols.he.client import HEClient
from fedshield.protocols.he.common import PROTOCOL_ID, STAGES
from fedshield.protocols.he.keys import HEKeyring, HEKeySetupClient, HEKeySetupServer
from fedshield.protocols.he.packing import pack_slots, unpack_slots
from fedshield.protocols.he.params import MAX_CLIENTS, HEConfig, HEPlan, plan_for
from fedshield.protocols.he.server import CiphertextSum, HEServer
from fedshield.protocols.he.threshold import ThresholdClient, ThresholdServer
from fedshield.protocols.he.threshold_keys import (
    ThresholdKeyring,
    ThresholdKeySetupClient,
    ThresholdKeySetupServer,
)

__all__ = [
    "MAX_CLIENTS",
    "PROTOCOL_ID",
    "STAGES",
    "CiphertextSum",
    "HEClient",
    "HEConfig",
    "HEKeySetupClient",
    "HEKeySetupServer",
    "HEKeyring",
    "HEPlan",
    "HEServer",
    "ThresholdClient",
    "ThresholdKeySetupClient",
    "ThresholdKeySetupServer",
    "ThresholdKeyring",
    "ThresholdServer",
    "pack_slots",
    "plan_for",
    "unpack_slots",
]
