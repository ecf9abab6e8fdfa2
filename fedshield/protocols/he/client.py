"""The ``he`` site session: encrypts its update, decrypts the sum (threat model: the package)."""

from __future__ import annotations

import array
from functools import partial

import numpy as np
import tenseal.sealapi as sa

from fedshield import wire
from fedshield._validate import check_instance, check_int
from fedshield.crypto import ring
from fedshield.crypto.seal import SealIO
from fedshield.errors import ProtocolAbort, WrongShape
from fedshield.protocols.base import ClientSession, handles
from fedshield.protocols.he.common import (
    DECRYPTS_PER_FORK,
    ENCRYPTS_PER_FORK,
    PROTOCOL_ID,
    STAGES,
    HEStage,
    load_ciphertexts,
    read_sizes,
)
from fedshield.protocols.he.forked import (
    fork_map,
    shared_array,
    worker_count,
)
from fedshield.protocols.he.keys import HEKeyring
from fedshield.protocols.he.packing import pack_slots, place_values, unpack_slots
from fedshield.protocols.he.reports import answer_aggregate
from fedshield.protocols.ranges import TensorRanges

__all__ = ["HEClient"]


# --- client -----------------------------------------------------------------------------------
class HEClient(ClientSession):
    """Site side: encrypts its encoded update, then decrypts the summed ciphertexts.

    ``workers``: processes that encrypt and decrypt; by default one per core when each gets
    enough ciphertexts to pay for a fork (:data:`ENCRYPTS_PER_FORK`), else this process.
    ``ranges``: the round's per-tensor ranges when the config has no fixed clip (BFV); the
    decrypted statistic is then :attr:`range_counts`.
    """

    protocol_id = PROTOCOL_ID
    stages = STAGES
    large_payloads = True
    keyring_type: type = HEKeyring
    encrypts_per_fork = ENCRYPTS_PER_FORK

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
        ranges: TensorRanges | None = None,
    ) -> None:
        super().__init__(
            client_id=client_id, round=round, update=update, weight=weight, quant_seed=quant_seed
        )
        check_instance("keyring", keyring, self.keyring_type, "from the key setup")
        if update.size != keyring.plan.dim:
            raise ValueError(
                f"update: the keyring's plan is for {keyring.plan.dim} values, got {update.size}"
            )
        self.keyring = keyring
        self.plan = keyring.plan
        self.grid = self.plan.config.grid(ranges) if self.plan.scheme == "bfv" else None
        if ranges is not None:
            ranges.check_covers(update.size)
            if ranges.stat_values != self.plan.stat_values:
                raise ValueError("ranges: the key setup planned for another number of tensors")
        self.ranges = ranges
        self.workers = check_int("workers", workers, low=1, optional=True)
        self.level_sum: np.ndarray | None = None

    @handles(HEStage.INPUT)
    def _send_input(self, stage: str, message: wire.Message) -> bytes:
        message.require_fields(1)
        if message.raw(0, length=32) != self.plan.params_id:
            raise WrongShape("the server's HE parameters differ from this site's")
        blobs = self._encrypt()
        sizes = np.array([len(b) for b in blobs], dtype=np.uint32)
        return self._client_message(stage, [self.plan.params_id, sizes, b"".join(blobs)])

    @handles(HEStage.AGGREGATE)
    def _take_aggregate(self, stage: str, message: wire.Message) -> bytes:
        message.require_fields(4)
        if message.raw(0, length=32) != self.plan.params_id:
            raise WrongShape("the aggregate is under other parameters")
        contributors = message.array(1, dtype="<u4").tolist()
        if not contributors or len(set(contributors)) != len(contributors):
            raise WrongShape("the aggregate names no (or repeated) contributors")
        if len(contributors) > self.plan.n_clients:
            raise WrongShape(f"the aggregate names more than the {self.plan.n_clients} sites")
        sizes, blob = read_sizes(message, 2, self.plan)
        decode = partial(self._decrypt, sizes, blob, len(contributors))
        self.aggregate, fields = answer_aggregate(self.plan, decode)
        return self._client_message(stage, fields)

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
        workers = worker_count(self.workers, len(rows), min_items=self.encrypts_per_fork)
        fork_map(partial(_encrypt_rows, self.keyring, rows, out, sizes), len(rows), workers)
        return [row[:size].data for row, size in zip(out, sizes, strict=True)]

    def _encode_bfv(self) -> np.ndarray:
        """Packed slots: the weighted, quantized update, the integer weight (its digits and a
        count, under fraction weighting), then the range statistic."""
        plan, config = self.plan, self.plan.config
        weight = ring.integer_weight(self.weight, config.max_weight, config.weight_bits)
        integer = config.weighting == "integer"
        share = 1.0 if integer else ring.weight_fraction(weight, config.weight_bits)
        levels, stat = self.grid.encode(self.update, share, seed=self.quant_seed)
        self._send_later(lambda: self.grid.sent_from(self.update, share, seed=self.quant_seed))
        rows = pack_slots(levels, plan, scale=weight if integer else 1)
        if integer:
            tail = [weight]
        else:  # the weight's digits, then a 1 that counts the sites in the sum
            tail = [*ring.to_digits(weight, quant_bits=config.quant_bits,
                                    count=config.weight_digits), 1]  # fmt: skip
        place_values(rows, self.update.size, np.array([*tail, *stat], np.uint64), plan)
        return rows

    def _decrypt(
        self, sizes: np.ndarray, blob: memoryview, contributors: int
    ) -> tuple[np.ndarray, float]:
        plan = self.plan
        dtype = np.uint64 if plan.scheme == "bfv" else np.float64
        flat = shared_array((plan.n_ciphertexts, plan.slots), dtype)
        workers = worker_count(self.workers, len(sizes), min_items=DECRYPTS_PER_FORK)
        fork_map(partial(_decrypt_rows, self.keyring, sizes, blob, flat), len(sizes), workers)
        return self._decode_slots(flat, contributors)

    def _decode_slots(self, flat: np.ndarray, contributors: int) -> tuple[np.ndarray, float]:
        """The weighted sum and total weight from the decrypted slots ``(ciphertexts, slots)``,
        checked against what honest sites could have sent."""
        plan, config = self.plan, self.plan.config
        dim = self.update.size
        if plan.scheme == "ckks":
            values = flat.reshape(-1)
            return values[:dim].copy(), float(values[dim])
        if (flat >> np.uint64(plan.per_slot * plan.value_bits)).any():
            raise ProtocolAbort("a decrypted slot has bits above its top field: a site sent more")
        values = unpack_slots(flat, plan, dim + config.tail_values + plan.stat_values)
        self.level_sum = values  # summed levels, weight digits (and count), for auditors
        ranges = self.ranges if plan.stat_values else None
        try:
            weighted_sum, total, self.range_counts = self.grid.decode_checked(
                values, contributors, config=config, dim=dim, ranges=ranges
            )
        except ValueError as exc:
            raise ProtocolAbort(str(exc)) from None
        return weighted_sum, float(total)


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
            data = io.dump(keyring.encrypt(plaintext))
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
