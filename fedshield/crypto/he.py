"""``he``: packed homomorphic aggregation (SEAL through ``tenseal.sealapi``). The server adds
ciphertexts it cannot read and sends the encrypted sum back; the sites decrypt it.

Threat model. The server is honest-but-curious: it sees ciphertexts, their sizes and who sent
them, and it adds them; it never holds the secret key (key distribution:
:mod:`fedshield.crypto.he_keys`), so it learns nothing of any update nor of the aggregate. Every
site holds the same secret key, so **a server colluding with any one site can decrypt every
site's update**, exactly as in NVIDIA FLARE's HE; use ``secagg`` where that matters. Ciphertexts
carry no integrity: a site (or the network, without TLS) can send a well-formed but wrong
ciphertext and poison the sum; the server checks only that each is well-formed and under the
round's parameters. Dropouts: any number; the sum is over the sites whose ciphertexts arrived
(``contributors``, which the server learns), and a site that misses the ``aggregate`` stage just
does not get this round's result.

Encoding. BFV (default): updates are weighted (``weighting``: scaled by the site's weight
fraction before quantization, or levels times its integer weight), clipped and stochastically
quantized (the shared-range kernel), and ``per_slot`` values are packed into each of the 4096
slots of a ciphertext at ``value_bits`` apart, so the sum of n sites never carries (parameters
and the error of each weighting: :mod:`fedshield.crypto.he_params`). The integer weight
follows as ``weight_digits`` more values (then, with fraction weighting, a count of sites, which
each site checks against the server's list of contributors). Ciphertexts are symmetric and
seeded (33 KB per 4096 slots). CKKS (``scheme="ckks"``): float updates times
``weight / max_weight``, one value per slot, no quantization. Large updates are encrypted,
added and decrypted by one forked worker per core (:mod:`fedshield.crypto.forked`); the server's
workers each own a range of ciphertexts and add a site's part only once every worker has
parsed and checked its own part of that site's message.

Stages: ``input`` (each site: its ciphertexts) → ``aggregate`` (the server: the summed
ciphertexts; each site decrypts them into :attr:`ClientSession.aggregate`).
"""

from __future__ import annotations

import array
import weakref
from functools import partial

import numpy as np
import tenseal.sealapi as sa

from fedshield import wire
from fedshield.compress import fields
from fedshield.crypto import ring
from fedshield.crypto.forked import (
    ForkedObject,
    LocalObject,
    fork_map,
    shared_array,
    split_range,
    worker_count,
)
from fedshield.crypto.he_keys import HEKeyring
from fedshield.crypto.he_params import HEPlan, SealIO
from fedshield.errors import InvalidCiphertext, ProtocolAbort, WrongShape
from fedshield.protocols.base import ClientSession, Revealed, ServerSession

__all__ = ["CiphertextSum", "HEClient", "HEServer", "pack_slots", "unpack_slots"]

PROTOCOL_ID = 3
STAGES = ("input", "aggregate")
# By default a site forks a worker per core only for at least this many ciphertexts each
# (about 1 ms to encrypt one, 0.4 ms to decrypt one; measured fork cost 20-70 ms).
ENCRYPTS_PER_FORK = 256
DECRYPTS_PER_FORK = 512


# --- packing ----------------------------------------------------------------------------------
def pack_slots(values: np.ndarray, plan: HEPlan, *, scale: int = 1) -> np.ndarray:
    """``(n_ciphertexts, slots)`` uint64 of ``values * scale``: value ``i`` goes to ciphertext
    ``i // (slots·m)``, slot ``j % slots`` and field ``j // slots`` (``j`` its index within the
    ciphertext)."""
    return fields.pack_fields(
        values,
        rows=plan.n_ciphertexts,
        slots=plan.slots,
        per_slot=plan.per_slot,
        bits=plan.value_bits,
        scale=scale,
    )


def unpack_slots(slots: np.ndarray, plan: HEPlan, length: int) -> np.ndarray:
    """Inverse of :func:`pack_slots` for the first ``length`` values."""
    return fields.unpack_fields(slots, length=length, per_slot=plan.per_slot, bits=plan.value_bits)


def _place(rows: np.ndarray, index: int, value: int, plan: HEPlan) -> None:
    """Put one more value at position ``index`` of packed ``rows`` (its field is empty)."""
    row, k = divmod(index, plan.slots * plan.per_slot)
    field, slot = divmod(k, plan.slots)
    rows[row, slot] |= np.uint64(value) << np.uint64(field * plan.value_bits)


# --- server -----------------------------------------------------------------------------------
class CiphertextSum:
    """Running sum of ciphertexts ``lo..hi-1`` over the accepted sites: ``stage`` parses and
    checks one site's ciphertexts (raising before anything is added), ``commit`` adds them.

    Bytes come and go through ``inbox`` (shared with the server process when this runs in a
    forked worker): one site's ciphertexts before ``stage``, the sums after ``write``.
    """

    def __init__(self, plan: HEPlan, lo: int, hi: int, inbox: np.ndarray) -> None:
        self.plan, self.lo, self.hi, self.inbox = plan, lo, hi, inbox
        self.io = SealIO(plan.context())  # public parameters only
        self.evaluator = sa.Evaluator(self.io.context)
        self.total: list[sa.Ciphertext] | None = None
        self.pending: list[sa.Ciphertext] | None = None
        self.serialized: list[bytes] = []

    def stage(self, sizes: np.ndarray, start: int) -> None:
        """Parse one site's ciphertexts of this range, ``sizes`` bytes each from ``inbox[start:]``;
        raises InvalidCiphertext."""
        self.pending = None
        blob = memoryview(self.inbox[start : start + int(sizes.sum())])
        self.pending = load_ciphertexts(sizes, blob, self.plan, self.io)

    def commit(self) -> None:
        """Add the staged ciphertexts to the sum."""
        if self.total is None:
            self.total = self.pending
        else:
            for total, ct in zip(self.total, self.pending, strict=True):
                self.evaluator.add_inplace(total, ct)
        self.pending = None

    def discard(self) -> None:
        """Forget the staged ciphertexts."""
        self.pending = None

    def serialize(self) -> list[int]:
        """Serialize the sums (kept here until :meth:`write`); returns their sizes."""
        self.serialized = [self.io.dump(ct) for ct in self.total]
        self.total = None
        return [len(data) for data in self.serialized]

    def write(self, offset: int) -> None:
        """Write the serialized sums one after the other into ``inbox[offset:]``."""
        for data in self.serialized:
            self.inbox[offset : offset + len(data)] = np.frombuffer(data, np.uint8)
            offset += len(data)
        self.serialized = []

    def close(self) -> None:
        """Remove the tmpfs file."""
        self.io.close()


class HEServer(ServerSession):
    """Server side: checks and adds ciphertexts, returns the encrypted sum. Holds no key.

    ``workers``: processes that parse and add (each owns a range of ciphertexts); by default
    one per core for large updates, this process alone for small ones.
    """

    protocol_id = PROTOCOL_ID
    stages = STAGES
    large_payloads = True

    def __init__(
        self, *, round: int, clients, dim: int, plan: HEPlan, workers: int | None = None
    ) -> None:
        super().__init__(round=round, clients=clients, dim=dim)
        if plan.dim != dim:
            raise ValueError(f"the HE plan is for {plan.dim} values, the round has {dim}")
        self.plan = plan
        self.ranges = split_range(plan.n_ciphertexts, worker_count(workers, plan.n_ciphertexts))
        self.parts: list = []
        self.inbox = np.empty(0, np.uint8)  # made (shared) when the input stage opens
        self._closer = weakref.finalize(self, _close_all, self.parts)
        self.contributors: list[int] = []

    def describe(self) -> dict:
        """Scheme, parameters and packing of this round."""
        p = self.plan
        return {
            "scheme": p.scheme,
            "weighting": p.config.weighting if p.scheme == "bfv" else None,
            "poly_degree": p.poly_degree,
            "plain_bits": p.plain_bits or None,
            "values_per_slot": p.per_slot,
            "ciphertexts": p.n_ciphertexts,
        }

    def _max_message_bytes(self, stage: str) -> int:
        if stage == "input":
            return 256 + self.plan.n_ciphertexts * (4 + self.plan.max_ciphertext_bytes)
        return 256

    def _broadcast(self, stage: str) -> dict[int, bytes]:
        alive = sorted(self.alive)
        if stage == "input":
            self._start_parts()
            msg = self._server_message(stage, [self.plan.params_id])
            return {c: msg for c in alive}
        for part in self.parts:
            part.send("serialize")
        part_sizes = [np.array(part.result(), np.uint32) for part in self.parts]
        offset = 0
        for part, sizes in zip(self.parts, part_sizes, strict=True):
            part.send("write", offset)
            offset += int(sizes.sum())
        for part in self.parts:
            part.result()
        self._closer()
        sums = self.inbox[:offset].data  # the summed ciphertexts, back to back
        message = [self.plan.params_id, np.array(self.contributors, np.uint32)]
        message += [np.concatenate(part_sizes), sums]
        msg = self._server_message(stage, message)
        return {c: msg for c in alive}

    def _start_parts(self) -> None:
        plan = self.plan
        self.inbox = shared_array((plan.n_ciphertexts * plan.max_ciphertext_bytes,), np.uint8)
        holder = LocalObject if len(self.ranges) == 1 else ForkedObject
        for lo, hi in self.ranges:
            self.parts.append(holder(partial(CiphertextSum, plan, lo, hi, self.inbox)))

    def _receive(self, stage: str, sender: int, message: wire.Message) -> None:
        if stage == "aggregate":
            message.require_fields(0)
            return
        message.require_fields(3)
        if message.raw(0, length=32) != self.plan.params_id:
            raise WrongShape(f"client {sender} encrypted under other parameters")
        sizes, blob = read_sizes(message, 1, self.plan)
        self.inbox[: len(blob)] = np.frombuffer(blob, np.uint8)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        for part, (lo, hi) in zip(self.parts, self.ranges, strict=True):
            part.send("stage", sizes[lo:hi], int(offsets[lo]))
        errors = []
        for part in self.parts:
            try:
                part.result()
            except Exception as exc:  # every part must answer before the next request
                errors.append(exc)
        # Every ciphertext parsed and checked: only now does anything touch the sum.
        verdict = "discard" if errors else "commit"
        for part in self.parts:
            part.send(verdict)
        for part in self.parts:
            part.result()
        if errors:
            raise errors[0]
        self.contributors.append(sender)

    def _close_stage(self, stage: str) -> None:
        if stage == "input" and not self.contributors:
            self._closer()
            raise ProtocolAbort(f"round {self.round}: no site delivered a valid ciphertext")

    def _reveal(self) -> Revealed:
        return Revealed(
            contributors=tuple(sorted(self.contributors)),
            weighted_sum=None,
            total_weight=None,
            dropped=tuple(c for c in self.clients if c not in self.contributors),
        )


def _close_all(parts: list) -> None:
    for part in parts:
        part.close(wait=False)
    parts.clear()


def read_sizes(message: wire.Message, first: int, plan: HEPlan) -> tuple[np.ndarray, memoryview]:
    """The ciphertext sizes (field ``first``) and their concatenated bytes (``first + 1``)."""
    sizes = message.array(first, dtype="<u4", shape=(plan.n_ciphertexts,)).astype(np.int64)
    if (sizes > plan.max_ciphertext_bytes).any():
        raise InvalidCiphertext("a ciphertext is larger than these parameters allow")
    return sizes, message.view(first + 1, length=int(sizes.sum()))


def load_ciphertexts(
    sizes: np.ndarray, blob: bytes | memoryview, plan: HEPlan, io: SealIO
) -> list[sa.Ciphertext]:
    """Ciphertexts of the given ``sizes`` from their concatenated bytes, each checked."""
    out, offset = [], 0
    for size in sizes:
        out.append(
            io.load_ciphertext(blob[offset : offset + size], max_bytes=plan.max_ciphertext_bytes)
        )
        offset += size
    return out


# --- client -----------------------------------------------------------------------------------
class HEClient(ClientSession):
    """Site side: encrypts its encoded update, then decrypts the summed ciphertexts.

    ``workers``: processes that encrypt and decrypt; by default one per core when each gets
    enough ciphertexts to pay for a fork (:data:`ENCRYPTS_PER_FORK`), else this process.
    """

    protocol_id = PROTOCOL_ID
    stages = STAGES
    large_payloads = True

    def __init__(
        self,
        *,
        client_id: int,
        round: int,
        update: np.ndarray,
        weight: float,
        keyring: HEKeyring,
        quant_seed: int | None = None,
        workers: int | None = None,
    ) -> None:
        super().__init__(
            client_id=client_id, round=round, update=update, weight=weight, quant_seed=quant_seed
        )
        if update.size != keyring.plan.dim:
            raise ValueError(f"the HE plan is for {keyring.plan.dim} values, got {update.size}")
        self.keyring = keyring
        self.plan = keyring.plan
        self.workers = workers
        self.level_sum: np.ndarray | None = None

    def _handle(self, stage: str, message: wire.Message) -> bytes:
        if stage == "input":
            message.require_fields(1)
            if message.raw(0, length=32) != self.plan.params_id:
                raise WrongShape("the server's HE parameters differ from this site's")
            blobs = self._encrypt()
            sizes = np.array([len(b) for b in blobs], dtype=np.uint32)
            return self._client_message(stage, [self.plan.params_id, sizes, b"".join(blobs)])
        message.require_fields(4)
        if message.raw(0, length=32) != self.plan.params_id:
            raise WrongShape("the aggregate is under other parameters")
        contributors = message.array(1, dtype="<u4").tolist()
        if not contributors or len(set(contributors)) != len(contributors):
            raise WrongShape("the aggregate names no (or repeated) contributors")
        self.aggregate = self._decrypt(*read_sizes(message, 2, self.plan), len(contributors))
        return self._client_message(stage, [])

    def _encrypt(self) -> list[memoryview]:
        plan, config = self.plan, self.plan.config
        if plan.scheme == "bfv":
            rows = self._encode_bfv()
        else:
            fraction = min(1.0, self.weight / config.max_weight)
            rows = np.zeros(plan.n_ciphertexts * plan.slots, dtype=np.float64)
            rows[: self.update.size] = self.update * fraction
            rows[self.update.size] = fraction
            rows = rows.reshape(plan.n_ciphertexts, plan.slots)
            self.sent = self.update
        out = shared_array((plan.n_ciphertexts, plan.max_ciphertext_bytes), np.uint8)
        sizes = shared_array((plan.n_ciphertexts,), np.int64)
        # A fork of a large process costs tens of ms: worth it from ~0.25 s of work per worker.
        workers = worker_count(self.workers, len(rows), min_items=ENCRYPTS_PER_FORK)
        fork_map(partial(_encrypt_rows, self.keyring, rows, out, sizes), len(rows), workers)
        return [row[:size].data for row, size in zip(out, sizes, strict=True)]

    def _encode_bfv(self) -> np.ndarray:
        """Packed slots: the weighted, quantized update, then the integer weight."""
        plan, config = self.plan, self.plan.config
        quant = {"clip": config.clip, "quant_bits": config.quant_bits}
        weight = ring.integer_weight(self.weight, config.max_weight, config.weight_bits)
        dim = self.update.size
        if config.weighting == "integer":
            levels = ring.encode(self.update, seed=self.quant_seed, **quant)
            self.sent = ring.dequantize(levels, **quant)
            rows = pack_slots(levels, plan, scale=weight)
            _place(rows, dim, weight, plan)
            return rows
        share = np.float32(weight / ring.weight_top(config.weight_bits))
        levels = ring.encode(self.update * share, seed=self.quant_seed, **quant)
        self.sent = ring.dequantize(levels, **quant) / share
        rows = pack_slots(levels, plan)
        for k in range(config.weight_digits):  # base 2^quant_bits digits
            digit = (weight >> (k * config.quant_bits)) & ((1 << config.quant_bits) - 1)
            _place(rows, dim + k, digit, plan)
        _place(rows, dim + config.weight_digits, 1, plan)  # counts the sites in the sum
        return rows

    def _decrypt(
        self, sizes: np.ndarray, blob: memoryview, contributors: int
    ) -> tuple[np.ndarray, float]:
        plan, config = self.plan, self.plan.config
        dtype = np.uint64 if plan.scheme == "bfv" else np.float64
        flat = shared_array((plan.n_ciphertexts, plan.slots), dtype)
        workers = worker_count(self.workers, len(sizes), min_items=DECRYPTS_PER_FORK)
        fork_map(partial(_decrypt_rows, self.keyring, sizes, blob, flat), len(sizes), workers)
        dim = self.update.size
        if plan.scheme == "ckks":
            values = flat.reshape(-1)
            return values[:dim].copy(), float(values[dim])
        values = unpack_slots(flat, plan, dim + config.tail_values)
        self.level_sum = values  # summed levels, weight digits (and count), for auditors
        total = sum(
            int(values[dim + k]) << (k * config.quant_bits) for k in range(config.weight_digits)
        )
        if total == 0:
            raise ProtocolAbort("the decrypted total weight is zero")
        if config.weighting == "integer":
            mean = ring.decode_mean(
                values[:dim], total, clip=config.clip, quant_bits=config.quant_bits
            )
            return mean.astype(np.float64) * total, float(total)
        if int(values[-1]) != contributors:
            raise ProtocolAbort(
                f"the sum holds {int(values[-1])} sites, the server names {contributors}"
            )
        # sum_i share_i x_i, from the summed levels of every contributor's scaled update
        shares = ring.decode_sum(
            values[:dim], contributors, clip=config.clip, quant_bits=config.quant_bits
        )
        return shares * ring.weight_top(config.weight_bits), float(total)


def _encrypt_rows(
    keyring: HEKeyring, rows: np.ndarray, out: np.ndarray, sizes: np.ndarray, lo: int, hi: int
) -> None:
    """Seeded symmetric ciphertexts of ``rows[lo:hi]``, serialized into ``out[i]`` (``sizes[i]``
    bytes)."""
    plaintext = sa.Plaintext()
    ckks = keyring.plan.scheme == "ckks"
    scale = float(2**keyring.plan.scale_bits)
    with SealIO(keyring.context) as io:
        for i in range(lo, hi):
            if ckks:
                keyring.encoder.encode(rows[i].tolist(), scale, plaintext)
            else:
                keyring.encoder.encode(rows[i].tolist(), plaintext)
            data = io.dump(keyring.encryptor.encrypt_symmetric(plaintext))
            out[i, : len(data)] = np.frombuffer(data, np.uint8)
            sizes[i] = len(data)


def _decrypt_rows(
    keyring: HEKeyring, sizes: np.ndarray, blob: memoryview, out: np.ndarray, lo: int, hi: int
) -> None:
    """Slots of the summed ciphertexts ``lo..hi-1`` into ``out[lo:hi]``; each ciphertext is
    checked before it is decrypted."""
    plan = keyring.plan
    start = int(sizes[:lo].sum())
    part = blob[start : start + int(sizes[lo:hi].sum())]
    plaintext = sa.Plaintext()
    with SealIO(keyring.context) as io:
        cts = load_ciphertexts(sizes[lo:hi], part, plan, io)
        for i, ct in enumerate(cts, start=lo):
            keyring.decryptor.decrypt(ct, plaintext)
            if plan.scheme == "bfv":
                out[i] = np.frombuffer(
                    array.array("Q", keyring.encoder.decode_uint64(plaintext)), np.uint64
                )
            else:
                out[i] = np.frombuffer(
                    array.array("d", keyring.encoder.decode_double(plaintext)), np.float64
                )[: plan.slots]
