import numpy as np

from fedshield.compress.feedback import ErrorFeedback, residual_reference
from fedshield.compress.quantize import dequantize_fixed, quantize_fixed
from fedshield.compress.sparsify import randk


def test_residual_kernel_equals_the_reference():
    rng = np.random.default_rng(0)
    corrected = rng.normal(size=1000).astype(np.float32)
    indices = np.sort(rng.choice(1000, 100, replace=False))
    sent = rng.normal(size=100).astype(np.float32)
    feedback = ErrorFeedback(1000)
    feedback.keep_unsent(corrected, sent, indices)
    np.testing.assert_array_equal(feedback.residual, residual_reference(corrected, indices, sent))
    feedback.keep_unsent(corrected, corrected)
    np.testing.assert_array_equal(feedback.residual, 0)


def test_transmitted_sum_tracks_the_true_sum():
    """Rand-k 5% + 2-bit quantization: sum(sent) - sum(true) equals -residual, which stays
    bounded, while without feedback the gap grows with the rounds."""
    dim, rounds = 2000, 200
    rng = np.random.default_rng(1)
    feedback = ErrorFeedback(dim)
    true_sum = np.zeros(dim)
    sent_sum = np.zeros(dim)
    naive_sum = np.zeros(dim)
    gaps = []
    for r in range(rounds):
        update = (0.01 + 0.01 * rng.normal(size=dim)).astype(np.float32)  # a steady drift
        corrected = feedback.compensate(update)
        idx = randk(dim, 100, seed=r)
        sent = dequantize_fixed(
            quantize_fixed(corrected[idx], clip=1.0, bits=2, seed=r), clip=1.0, bits=2
        )
        feedback.keep_unsent(corrected, sent, idx)
        naive_idx = randk(dim, 100, seed=10_000 + r)
        naive_sum[naive_idx] += dequantize_fixed(
            quantize_fixed(update[naive_idx], clip=1.0, bits=2, seed=r), clip=1.0, bits=2
        )
        true_sum += update
        sent_sum[idx] += sent
        gaps.append(np.abs(true_sum - sent_sum).mean())
        np.testing.assert_allclose(true_sum - sent_sum, feedback.residual, atol=1e-3)
    assert max(gaps[100:]) < 2 * max(gaps[:100])  # bounded, not growing
    assert np.abs(true_sum - naive_sum).mean() > 5 * gaps[-1]
