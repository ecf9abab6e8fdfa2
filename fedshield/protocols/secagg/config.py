"""Public parameters of a SecAgg+ round and the neighbour graph.

Building block: use the SecAgg+ protocol unless you know why not.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from fedshield._validate import check_int, check_real
from fedshield.crypto.ddg import DiscreteGaussianEncoding
from fedshield.crypto.ring import integer_weight, ring_bits
from fedshield.errors import ConfigError
from fedshield.protocols.counts import CountGrid, count_ring_bits
from fedshield.protocols.noisy import NoisyGrid
from fedshield.protocols.ranges import Grid, TensorRanges

__all__ = [
    "COMPLETE_GRAPH_MAX_N",
    "WEIGHTINGS",
    "SecAggConfig",
    "default_neighbours",
    "neighbour_graph",
]

COMPLETE_GRAPH_MAX_N = 32
WEIGHTINGS = ("integer", "fraction")


def default_neighbours(n: int) -> int:
    """Neighbours per client: the complete graph up to 32 clients, else ``2·⌈4·log2 n⌉``.

    Bell et al. (CCS 2020) show a random graph of degree ``O(log n)`` keeps the sum private
    and connected under dropouts with overwhelming probability; the constant 4 (per side) is
    our conservative choice, overridable with :attr:`SecAggConfig.neighbours`.
    """
    if n <= COMPLETE_GRAPH_MAX_N:
        return n - 1
    return min(n - 1, 2 * math.ceil(4 * math.log2(n)))


def neighbour_graph(
    clients: list[int], k: int, seed: bytes, only: int | None = None
) -> dict[int, tuple[int, ...]]:
    """A random k-regular graph (Harary graph on a seeded permutation); complete if k >= n-1.

    ``seed`` is public (SecAgg+ derives it from the round's signed keys,
    :func:`~fedshield.protocols.secagg.common.graph_seed`); every party computes the same
    graph.
    With ``only``, just that client's neighbours are computed (what a client needs).
    """
    clients = sorted(clients)
    n = len(clients)
    wanted = clients if only is None else [only]
    if k >= n - 1:
        return {c: tuple(x for x in clients if x != c) for c in wanted}
    # The permutation is public and non-secret: numpy's generator is fine for it.
    order = np.random.default_rng(np.frombuffer(seed, dtype=np.uint32)).permutation(clients)
    position = {int(c): p for p, c in enumerate(order)}
    half = k // 2
    offsets = [s for s in range(-half, half + 1) if s]
    return {c: tuple(sorted(int(order[(position[c] + s) % n]) for s in offsets)) for c in wanted}


@dataclass(frozen=True)
class SecAggConfig:
    """What every party agrees on before a round.

    Example:
        >>> SecAggConfig(clip=0.5, quant_bits=8, max_weight=120.0).bits(10)
        20

    Args:
        clip: updates are clipped to ``[-clip, clip]`` before quantization; ``None``: each
            round brings its own per-tensor ranges (:mod:`fedshield.protocols.ranges`).
        quant_bits: bits per quantized value (1..16).
        weight_bits: bits of the integer FedAvg weight each client multiplies in; 0 means an
            unweighted mean (every weight is 1) and saves those bits on the wire.
        max_weight: public upper bound of a client's weight (its sample count); weights are
            scaled to integers in ``[1, 2^weight_bits - 1]`` relative to it.
        threshold: Shamir threshold ``t``; ``None`` picks a majority of each share group.
        neighbours: neighbours per client; ``None`` uses :func:`default_neighbours`.
        colluders: the most clients a malicious server may collude with, which sizes the
            consistency quorum (:meth:`quorum`); ``None``: ``t - 1``, the most Shamir
            tolerates. A smaller value tolerates more dropouts after ``share_keys``.
        min_clients: the fewest clients a round may list, and the fewest survivors any stage
            may continue with, pinned by every client: a server cannot shrink a round (down
            to a lone victim whose own shares then unmask it). The engine pins the Shamir
            threshold of the whole federation; the roster's ``min_sites`` pins it as well,
            and since every member's keys are signed, a server cannot fill a round with
            members it plays itself.
        weighting: ``"integer"`` (each client multiplies its levels by its integer weight
            ``W``: the ring needs ``weight_bits`` more bits, the mean's error is at most one
            step) or ``"fraction"`` (each client quantizes its update times
            ``W / (2^weight_bits - 1)`` on the shared grid and sends ``W`` as base
            ``2^quant_bits`` digits and a 1 that counts the sites: the ring needs only
            ``quant_bits + ceil(log2 n)`` bits; every client adds at most one step of rounding
            error whatever its weight, so the mean's error is at most
            ``n · step · (2^weight_bits - 1) / sum W``; equal weights: the unweighted mean's;
            a client clips its update, then scales it, so every level lies within its
            fraction of the grid's middle: the server checks that of the sum).
        noise: distributed differential privacy (:mod:`fedshield.crypto.ddg`): each client
            sends noisy integer levels in place of quantized ones (``clip`` and
            ``quant_bits`` then shape nothing but the weight's digits); needs
            ``weight_bits=0`` (DP-FedAvg's unweighted sum).
        counts: a session that sums integer counts in ``[0, counts]`` exactly
            (:class:`~fedshield.protocols.counts.CountGrid`: evaluation summaries); needs
            ``weight_bits=0`` and no ``noise``; the ring holds ``ceil(log2(n · counts + 1))``
            bits. ``None`` (an update session) leaves the digest as it always was.

    Raises:
        TypeError: an argument of the wrong type (``quant_bits=8.5``, ``clip="1"``).
        ConfigError: a value out of range (a ``ValueError``).
    """

    clip: float | None = 0.1
    quant_bits: int = 8
    weight_bits: int = 8
    max_weight: float = 1.0
    threshold: int | None = None
    neighbours: int | None = None
    weighting: str = "fraction"
    min_clients: int = 1
    colluders: int | None = None
    noise: DiscreteGaussianEncoding | None = None
    counts: int | None = None

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        # Values arrive from code, not only the CLI: check types too (pyca's habit).
        if self.clip is not None:
            object.__setattr__(self, "clip", check_real("clip", self.clip, error=ConfigError))
        check_int("quant_bits", self.quant_bits, low=1, high=16, error=ConfigError)
        check_int("weight_bits", self.weight_bits, low=0, high=24, error=ConfigError)
        object.__setattr__(
            self, "max_weight", check_real("max_weight", self.max_weight, error=ConfigError)
        )
        check_int("threshold", self.threshold, low=1, optional=True, error=ConfigError)
        check_int("neighbours", self.neighbours, low=1, optional=True, error=ConfigError)
        check_int("min_clients", self.min_clients, low=1, error=ConfigError)
        check_int("colluders", self.colluders, low=0, optional=True, error=ConfigError)
        _check_noise(self.noise, self.weight_bits)
        _check_counts(self.counts, self.weight_bits, self.noise)

    def digest(self, ranges: TensorRanges | None = None) -> bytes:
        """SHA-256 of the parameters (and the round's ranges), so parties detect a mismatch
        in the first stage."""
        fields = asdict(self)
        if self.counts is None:  # an update session's digest, as before counts existed
            del fields["counts"]
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
        if ranges is not None:
            digest.update(ranges.digest())
        return digest.digest()

    def grid(self, ranges: TensorRanges | None) -> Grid | NoisyGrid | CountGrid:
        """The round's quantization grid: the fixed clip, or ``ranges`` when ``clip`` is
        ``None`` (each must come with the other's absence); under :attr:`noise`, its
        encoding; with :attr:`counts`, the exact integer grid."""
        if self.counts is not None:
            if ranges is not None:
                raise ConfigError("secagg: a count session takes no adaptive ranges")
            return CountGrid(self.counts)
        if self.noise is not None:
            if ranges is not None:
                raise ConfigError("secagg: distributed DP takes no adaptive ranges")
            return NoisyGrid(self.noise)
        return Grid.for_round("secagg", self.clip, ranges, self.quant_bits)

    def degree(self, n: int) -> int:
        """Neighbours per client in a round of ``n`` clients (even when the graph is sparse)."""
        k = default_neighbours(n) if self.neighbours is None else min(self.neighbours, n - 1)
        return k if k >= n - 1 else max(2, k - k % 2)

    def threshold_for(self, n: int) -> int:
        """Shamir threshold for share groups of ``degree + 1`` holders (a client and its
        neighbours): the configured one, or a strict majority of the group."""
        holders = self.degree(n) + 1
        t = holders // 2 + 1 if self.threshold is None else self.threshold
        if t > holders:
            raise ValueError(f"threshold {t} exceeds the {holders} holders of each secret")
        return t

    def quorum(self, n: int) -> int:
        """Signatures a client needs on the survivor set before it reveals any share, in a
        round of ``n`` clients: ``max(t, floor((n + c) / 2) + 1)`` for ``c`` colluders
        (:attr:`colluders`, default ``t - 1``). Two sets that each gather that many
        signatures share more than ``c`` signers, so one of them is honest, and an honest
        client signs one set per round: a server colluding with ``c`` clients cannot get two
        survivor sets accepted (Bonawitz et al. 2017, the ConsistencyCheck round, with the
        quorum sized for colluders; their active-security threshold is ``2n/3`` likewise).
        The price: at most ``n - quorum`` clients may drop after ``share_keys`` (none at
        n = 3 or 4 with the default; one at n = 5, two at n = 10)."""
        t = self.threshold_for(n)
        c = t - 1 if self.colluders is None else self.colluders
        if c >= t:
            raise ConfigError(f"colluders must be below the threshold {t} (Shamir's limit)")
        return min(n, max(t, (n + c) // 2 + 1))

    def bits(self, n: int) -> int:
        """Ring size for ``n`` clients."""
        if self.noise is not None:
            return self.noise.sum_bits(n)
        if self.counts is not None:
            return count_ring_bits(n, self.counts)
        weight_bits = self.weight_bits if self.weighting == "integer" else 0
        return ring_bits(quant_bits=self.quant_bits, n_clients=n, weight_bits=weight_bits)

    @property
    def weight_digits(self) -> int:
        """How many ring values carry a client's integer weight (base ``2^quant_bits``
        digits under fraction weighting, so that their sum never wraps)."""
        if self.weighting == "integer":
            return 1
        return max(1, -(-self.weight_bits // self.quant_bits))

    @property
    def tail_values(self) -> int:
        """Values after the update: the weight (its digits) and, with fraction weighting, a 1
        per client, so the server learns how many updates the sum holds."""
        return self.weight_digits + (self.weighting == "fraction")

    def integer_weight(self, weight: float) -> int:
        """The client's weight as an integer in ``[1, 2^weight_bits - 1]`` (1 if unweighted)."""
        return integer_weight(weight, self.max_weight, self.weight_bits)


def _check_counts(counts: int | None, weight_bits: int, noise) -> None:
    """A count session's bound, if any: a valid ``max_count``, unweighted, without noise."""
    if counts is None:
        return
    CountGrid(counts)  # its type and range
    if weight_bits != 0 or noise is not None:
        raise ConfigError("a count session sums unweighted counts: weight_bits=0, no noise")


def _check_noise(noise: DiscreteGaussianEncoding | None, weight_bits: int) -> None:
    """Distributed DP's encoding, if any, of the right type, with unweighted sums."""
    if noise is None:
        return
    if not isinstance(noise, DiscreteGaussianEncoding):
        raise TypeError(f"noise must be a DiscreteGaussianEncoding, got {type(noise).__name__}")
    if weight_bits != 0:
        raise ConfigError("distributed DP sums unweighted updates: it needs weight_bits=0")
