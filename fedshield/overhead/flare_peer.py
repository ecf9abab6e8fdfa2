"""The peer of ``he``: homomorphic aggregation the NVIDIA FLARE way, as its HE filters do it.

TenSEAL CKKS, N = 8192, coefficient moduli [60, 40, 40], scale 2^40, a symmetric context, one
``ckks_vector`` per layer, serialized. The server gets the context without its secret key
(enough to add); every site decrypts the sum with the shared secret key.
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["FLARE_PARAMETERS", "flare_way"]

FLARE_PARAMETERS = {
    "scheme": "CKKS",
    "poly_modulus_degree": 8192,
    "coeff_mod_bit_sizes": [60, 40, 40],
    "global_scale": "2^40",
    "vectors": "one ckks_vector per layer",
}


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def flare_way(layers: list[np.ndarray], n: int) -> dict:
    """One round of ``n`` sites the FLARE way over one site's ``layers``.

    One site encrypts (timed); the server parses and adds ``n`` such uploads (every site sent
    the same bytes here; parsing still runs for each) and serializes the sum; one site
    decrypts it.

    Args:
        layers: the update, one array per layer (each becomes one ``ckks_vector``).
        n: how many sites' uploads the server adds.

    Returns:
        ``encrypt_s``, ``bytes_up`` and ``bytes_down`` (the serialized sum) per site,
        ``sum_s``, ``decrypt_s`` and ``max_abs_error`` of the decrypted mean.
    """
    import tenseal as ts

    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=8192,
        coeff_mod_bit_sizes=[60, 40, 40],
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    )
    context.global_scale = 2**40
    blobs, encrypt_s = _timed(
        lambda: [ts.ckks_vector(context, layer.ravel().tolist()).serialize() for layer in layers]
    )
    server_context = ts.context_from(context.serialize(save_secret_key=False))

    def server_sum():
        total = [ts.ckks_vector_from(server_context, b) for b in blobs]
        for _ in range(n - 1):
            for i, b in enumerate(blobs):
                total[i] += ts.ckks_vector_from(server_context, b)
        return [t.serialize() for t in total]

    summed, sum_s = _timed(server_sum)
    decrypted, decrypt_s = _timed(
        lambda: [np.array(ts.ckks_vector_from(context, b).decrypt()) for b in summed]
    )
    error = max(
        float(np.abs(d / n - layer.ravel()).max())
        for d, layer in zip(decrypted, layers, strict=True)
    )
    return {
        "encrypt_s": encrypt_s,
        "bytes_up": sum(len(b) for b in blobs),
        "bytes_down": sum(len(b) for b in summed),
        "sum_s": sum_s,
        "decrypt_s": decrypt_s,
        "max_abs_error": error,
    }
