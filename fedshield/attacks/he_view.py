"""What the server of a threshold ``he`` round can compute from what it holds: the sum.

It sees each site's ciphertexts under the collective key, whose secret no one holds (the
audit's key walk, :mod:`fedshield.audit.keywalk`, finds no key share on the server): nothing
there to invert. But it adds them (``ThresholdServer.total``) and adds the decrypting sites'
partial decryptions (``ThresholdServer.partials``), and ``(c0 + sum of partials, 0)``
decrypts to the sum's plaintext under *any* secret key
(:func:`fedshield.crypto.threshold.combine`). So the server decrypts the sum with a key it
makes up itself, and decodes it with the public plan and the ranges it broadcast: it learns
the sum, as under ``secagg`` (the threshold module's threat model says so).
"""

from __future__ import annotations

import numpy as np
import tenseal.sealapi as sa

from fedshield._validate import check_instance
from fedshield.crypto.seal import SealIO
from fedshield.crypto.seal_codec import SealCiphertext
from fedshield.crypto.threshold import combine, parms_bytes
from fedshield.errors import ProtocolAbort
from fedshield.protocols.he.packing import unpack_slots
from fedshield.protocols.he.threshold import ThresholdServer
from fedshield.protocols.ranges import TensorRanges

__all__ = ["server_decrypted_sum"]


def server_decrypted_sum(
    server: ThresholdServer, ranges: TensorRanges | None
) -> tuple[np.ndarray, float]:
    """``(weighted sum, total weight)`` of a finished threshold round, decrypted from the
    server session's own state alone, with a secret key it generated (never a site's).

    Args:
        server: the round's server session, after its ``aggregate`` stage.
        ranges: the round's ranges, which the server broadcast (adaptive ranges), or ``None``.

    Raises:
        ProtocolAbort: the round did not reach its partial decryptions.
    """
    check_instance("server", server, ThresholdServer)
    plan = server.plan
    if not server.contributors or not server.partials.any():
        raise ProtocolAbort("the threshold round never reached its partial decryptions")
    context = plan.context()
    made_up = sa.KeyGenerator(context).secret_key()  # the server's own: any key decrypts
    decryptor, encoder = sa.Decryptor(context, made_up), sa.BatchEncoder(context)
    parms_id = parms_bytes(context.first_parms_id())
    flat = np.empty((plan.n_ciphertexts, plan.slots), np.uint64)
    io = SealIO(context)
    try:
        for i, (ct, partial) in enumerate(zip(server.total, server.partials, strict=True)):
            combined = sa.Ciphertext()
            io.load_object(combined, combine(SealCiphertext(parms_id, False, ct), partial,
                                             server.moduli))  # fmt: skip
            plaintext = sa.Plaintext()
            decryptor.decrypt(combined, plaintext)
            flat[i] = encoder.decode_uint64(plaintext)
    finally:
        io.close()
    config = plan.config
    values = unpack_slots(flat, plan, plan.dim + config.tail_values + plan.stat_values)
    try:
        weighted_sum, total, _ = config.grid(ranges).decode_checked(
            values, len(server.contributors), config=config, dim=plan.dim,
            ranges=ranges if plan.stat_values else None,
        )  # fmt: skip
    except ValueError as exc:  # as the sites' own decoding reports it
        raise ProtocolAbort(f"the decrypted sum is off the grid: {exc}") from exc
    return weighted_sum, float(total)
