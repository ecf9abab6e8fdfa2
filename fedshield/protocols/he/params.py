"""Parameters of packed homomorphic aggregation: how many bits, slots and ciphertexts.

**BFV** (default): N = 4096, a coefficient modulus of one 60-bit prime, and a batching plain
modulus ``t`` of ``tbits`` bits. Aggregation only adds, so no key switching is ever needed and
SEAL's default modulus for N = 4096 (three primes, 109 bits) would spend a second data prime and
a special prime on nothing: one prime halves every ciphertext's size and cost (measured: encrypt
0.67 vs 0.79 ms, seeded save 0.16 vs 0.68 ms, seeded load 0.25 vs 0.54 ms per ciphertext),
and 60 bits at N = 4096 is well inside the 128-bit bound (109 bits; HE standard). The invariant
noise budget of a fresh symmetric encryption measured here is ``55 - tbits`` bits, and each
doubling of the number of summed ciphertexts costs one bit; we keep ``ceil(log2 n) + 2`` bits,
so ``tbits = 53 - ceil(log2 n)`` (51 at n = 3, 49 at n = 10, 43 at n = 1024). Each slot then
packs ``m = (tbits - 1) // w`` values of ``w`` bits, so that the sum of n clients' values never
carries into its neighbour and the packed slot stays below ``t``. Up to :data:`MAX_CLIENTS`
clients.

FedAvg weights (``weighting``), with ``W`` a site's integer weight of ``weight_bits`` bits:

- ``"fraction"`` (default): a site quantizes its update times ``W / (2^weight_bits - 1)`` on
  the shared grid, so a field needs only ``w = quant_bits + ceil(log2 n)`` bits; ``W`` travels
  as ``ceil(weight_bits / quant_bits)`` more values (base ``2^quant_bits`` digits), then a 1
  (the decrypted count of sites, checked against the server's list of contributors). Every site
  adds at most one grid step of rounding error whatever its weight, so the mean's error is at
  most ``n · step · (2^weight_bits - 1) / sum W`` (equal weights: the unweighted mean's).
- ``"integer"``: a site multiplies its levels by ``W`` (as ``secagg`` does: the two give the
  same aggregate bit for bit); fields need ``w = quant_bits + weight_bits + ceil(log2 n)`` bits,
  ``W`` is one more value, and the mean's error is at most one step. At 8 bits and 3 to 10
  sites this packs 2 values per slot instead of 4 or 5: twice the ciphertexts.

**CKKS** (``scheme="ckks"``): N = 4096 (2048 slots), coefficient modulus [60, 49] bits and
scale 2^36, the smallest setting that fits one addition level with a 60-bit special prime. The
decrypted sum of n float updates is within ``n · 2^-20`` of the exact sum (measured error
< 1e-7 per value per client; tested).

SEAL contexts and bytes in and out of SEAL objects: :mod:`fedshield.crypto.seal`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import tenseal.sealapi as sa

from fedshield._validate import check_choice, check_instance, check_int, check_real
from fedshield.crypto.ddg import DiscreteGaussianEncoding
from fedshield.crypto.seal import seal_context
from fedshield.crypto.threshold import flooding_bits
from fedshield.errors import ConfigError
from fedshield.protocols.counts import CountGrid
from fedshield.protocols.noisy import NoisyGrid
from fedshield.protocols.ranges import BUCKETS, Grid, TensorRanges

__all__ = [
    "MAX_CLIENTS",
    "THRESHOLD_MAX_CLIENTS",
    "HEConfig",
    "HEPlan",
    "plan_for",
]

POLY_DEGREE = 4096
MAX_CLIENTS = 1024
BFV_COEFF_BITS = (60,)
FRESH_BUDGET_AT_ZERO = 55  # measured: fresh noise budget = 55 - tbits (N = 4096, one 60-bit q)
CKKS_COEFF_BITS = (60, 49)
# Threshold keys (fedshield.crypto.threshold): public-key encryption and flooding need room.
THRESHOLD_POLY_DEGREE = 8192
THRESHOLD_COEFF_BITS = (60, 60, 20)  # data q: two 60-bit primes; a 20-bit special prime
THRESHOLD_Q_BITS = 119  # floor(log2 q) of the data level
THRESHOLD_MAX_CLIENTS = 128
CKKS_SCALE_BITS = 36


@dataclass(frozen=True)
class HEConfig:
    """What every site agrees on before the key is made.

    Args:
        scheme: ``"bfv"`` (quantized, packed; default) or ``"ckks"`` (floats).
        clip: BFV clips updates to ``[-clip, clip]`` before quantization; ``None``: each
            round brings per-tensor ranges (:mod:`fedshield.protocols.ranges`), whose
            statistic travels encrypted with the update.
        quant_bits: BFV bits per quantized value (1..16).
        weight_bits: bits of the integer FedAvg weight (0: unweighted mean).
        max_weight: public upper bound of a site's weight (its sample count).
        weighting: BFV: ``"fraction"`` (sites scale their update by their weight before
            quantizing; default) or ``"integer"`` (levels times the integer weight).
        noise: BFV with distributed differential privacy (:mod:`fedshield.crypto.ddg`):
            each site encrypts noisy integer levels in place of quantized ones; needs
            ``weight_bits=0`` (DP-FedAvg's unweighted sum).
        keys: ``"shared"`` (one secret key, made by a key-holder site and sealed to every
            site) or ``"threshold"`` (BFV: each site holds a share, and only ``threshold`` of
            them together decrypt the sum; :mod:`fedshield.crypto.threshold`).
        threshold: threshold keys: how many sites' shares decrypt (at least 2); ``None``:
            every site (n-of-n). Fewer than every site lets a round survive dropouts before
            its sum is fixed, and lets that many colluding sites decrypt.
        counts: a count session (:mod:`fedshield.protocols.he.count_sum`): each value is an
            integer count in ``[0, counts]`` summed exactly (``CountGrid``, every weight 1);
            needs BFV, ``weight_bits=0`` and no noise.

    Raises:
        TypeError: an argument of the wrong type.
        ConfigError: a value out of range or not among the choices (a ``ValueError``).
    """

    scheme: str = "bfv"
    clip: float | None = 0.1
    quant_bits: int = 8
    weight_bits: int = 8
    max_weight: float = 1.0
    weighting: str = "fraction"
    noise: DiscreteGaussianEncoding | None = None
    keys: str = "shared"
    threshold: int | None = None
    counts: int | None = None

    def __post_init__(self) -> None:
        # Messages name the argument (the CLI maps its flags onto these names).
        check_choice("weighting", self.weighting, ("fraction", "integer"), error=ConfigError)
        check_choice("scheme", self.scheme, ("bfv", "ckks"), error=ConfigError)
        check_choice("keys", self.keys, ("shared", "threshold"), error=ConfigError)
        if self.keys == "threshold" and self.scheme != "bfv":
            raise ConfigError("he: threshold keys need the BFV scheme (he_scheme='bfv')")
        check_int("threshold", self.threshold, low=2, optional=True, error=ConfigError)
        if self.threshold is not None and self.keys != "threshold":
            raise ConfigError("he: a decryption threshold needs threshold keys (keys='threshold')")
        if self.clip is not None:
            object.__setattr__(self, "clip", check_real("clip", self.clip, error=ConfigError))
        check_int("quant_bits", self.quant_bits, low=1, high=16, error=ConfigError)
        check_int("weight_bits", self.weight_bits, low=0, high=16, error=ConfigError)
        object.__setattr__(
            self, "max_weight", check_real("max_weight", self.max_weight, error=ConfigError)
        )
        if self.noise is not None:
            check_instance("noise", self.noise, DiscreteGaussianEncoding)
            if self.scheme != "bfv" or self.weight_bits != 0:
                raise ConfigError("he: distributed DP needs BFV and weight_bits=0 (unweighted)")
        if self.counts is not None:
            CountGrid(self.counts)  # checks the bound
            if self.scheme != "bfv" or self.weight_bits != 0 or self.noise is not None:
                raise ConfigError("he: a count session needs BFV, weight_bits=0 and no noise")

    @property
    def weight_digits(self) -> int:
        """How many packed values carry a site's integer weight."""
        if self.scheme == "ckks" or self.weighting == "integer":
            return 1
        return max(1, -(-self.weight_bits // self.quant_bits))

    @property
    def tail_values(self) -> int:
        """Values packed after the update: the weight's digits and, with fraction weighting,
        a 1 per site (the decrypted count of contributors)."""
        return self.weight_digits + (self.scheme == "bfv" and self.weighting == "fraction")

    @property
    def adaptive(self) -> bool:
        """Per-tensor ranges each round (BFV without a fixed clip)."""
        return self.scheme == "bfv" and self.clip is None and self.noise is None and not self.counts

    def grid(self, ranges: TensorRanges | None) -> Grid | NoisyGrid | CountGrid:
        """The round's BFV quantization grid (see :class:`~fedshield.protocols.ranges.Grid`),
        under :attr:`noise` its encoding, under :attr:`counts` the exact integer grid."""
        if self.counts is not None:
            return CountGrid(self.counts)
        if self.noise is not None:
            return NoisyGrid(self.noise)
        return Grid.for_round("he", self.clip, ranges, self.quant_bits)

    @property
    def field_bits(self) -> int:
        """BFV bits of one value before the ``ceil(log2 n)`` headroom of the sum."""
        if self.counts is not None:  # n counts of at most 2^b - 1 sum below 2^(b + log2 n)
            return max(self.counts.bit_length(), self.quant_bits)
        if self.noise is not None:
            return self.noise.level_bits
        if self.weighting == "integer":
            return self.quant_bits + self.weight_bits
        return self.quant_bits


@dataclass(frozen=True)
class HEPlan:
    """Concrete parameters for ``n_clients`` updates of ``dim`` values (plus the weight)."""

    scheme: str
    n_clients: int
    dim: int
    poly_degree: int
    coeff_bits: tuple[int, ...]
    plain_bits: int  # BFV: bits of t; CKKS: 0
    scale_bits: int  # CKKS: log2 of the scale; BFV: 0
    value_bits: int  # BFV: bits per packed value
    per_slot: int  # values per slot
    slots: int
    n_ciphertexts: int
    config: HEConfig
    stat_values: int = 0  # adaptive ranges: the statistic's values, packed after the tail
    flood_bits: int = 0  # threshold keys: each partial decryption's flooding (F)
    key_threshold: int = 0  # threshold keys: how many sites' shares decrypt

    @property
    def params_id(self) -> bytes:
        """SHA-256 of everything both sides must agree on; every ciphertext message names it."""
        fields = asdict(self)
        if fields["config"]["counts"] is None:  # an update session's id is as before counts
            del fields["config"]["counts"]
        return hashlib.sha256(repr(sorted(fields.items())).encode()).digest()

    def context(self) -> sa.SEALContext:
        """The SEAL context (public parameters only)."""
        return seal_context(
            self.scheme, self.poly_degree, self.coeff_bits, plain_bits=self.plain_bits
        )

    @property
    def max_ciphertext_bytes(self) -> int:
        """Upper bound of one serialized ciphertext: both polynomials uncompressed, plus
        room for SEAL's header and metadata and for zstd's framing of incompressible data."""
        raw = 2 * self.poly_degree * len(self.coeff_bits) * 8
        return 1024 + raw + raw // 64


def plan_for(config: HEConfig, *, n_clients: int, dim: int, tensors: int = 0) -> HEPlan:
    """The parameters for a round of ``n_clients`` updates of ``dim`` values in ``tensors``
    segments (adaptive ranges add a statistic per tensor; see :class:`HEConfig`).

    Raises:
        ConfigError: when no parameters decrypt the sum correctly (too many clients, or
            values too wide for a slot).
    """
    check_instance("config", config, HEConfig)
    check_int("n_clients", n_clients, low=1, high=MAX_CLIENTS, error=ConfigError)
    check_int("dim", dim, low=1, error=ConfigError)
    check_int("tensors", tensors, low=0, error=ConfigError)
    key_threshold = 0
    if config.keys == "threshold":
        if n_clients > THRESHOLD_MAX_CLIENTS:
            raise ConfigError(f"he: threshold keys take at most {THRESHOLD_MAX_CLIENTS} sites")
        key_threshold = config.threshold or n_clients
        if key_threshold > n_clients:
            raise ConfigError(f"he: a threshold of {key_threshold} exceeds the {n_clients} sites")
    if config.adaptive and not tensors:
        raise ConfigError("he: adaptive ranges (no fixed clip) need the number of tensors")
    stat_values = tensors * BUCKETS if config.adaptive else 0
    # the weight (and a count) and the range statistic travel as more values
    length = dim + config.tail_values + stat_values
    log_n = math.ceil(math.log2(n_clients)) if n_clients > 1 else 0
    if config.scheme == "ckks":
        slots = POLY_DEGREE // 2
        return HEPlan(
            "ckks", n_clients, dim, POLY_DEGREE, CKKS_COEFF_BITS, 0, CKKS_SCALE_BITS, 0, 1,
            slots, -(-length // slots), config, stat_values,
        )  # fmt: skip
    degree, coeff_bits, flood = POLY_DEGREE, BFV_COEFF_BITS, 0
    plain_bits = FRESH_BUDGET_AT_ZERO - 2 - log_n
    if config.keys == "threshold":
        degree, coeff_bits = THRESHOLD_POLY_DEGREE, THRESHOLD_COEFF_BITS
        flood = flooding_bits(n_clients, degree)
        plain_bits = min(60, THRESHOLD_Q_BITS - 2 - flood - log_n)  # q/2t >= 2 n 2^F
    width = config.field_bits + log_n
    per_slot = (plain_bits - 1) // width
    budget = FRESH_BUDGET_AT_ZERO - plain_bits - log_n if not flood else 2
    if per_slot < 1 or budget < 2:
        raise ConfigError(
            f"he: {n_clients} clients with {config.quant_bits}-bit values "
            f"({config.weighting} weights) need {width}-bit fields, more than a "
            f"{plain_bits}-bit BFV slot holds; lower quant_bits or the number of clients"
        )
    return HEPlan(
        "bfv", n_clients, dim, degree, coeff_bits, plain_bits, 0, width, per_slot,
        degree, -(-length // (degree * per_slot)), config, stat_values, flood, key_threshold,
    )  # fmt: skip
