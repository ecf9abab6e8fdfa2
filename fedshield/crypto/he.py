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

Encoding. BFV (default): updates are clipped and stochastically quantized (the shared-range
kernel), multiplied by the site's integer weight, and ``per_slot`` values are packed into each
of the 4096 slots of a ciphertext at ``value_bits`` apart, so the sum of n sites never carries
(parameters: :mod:`fedshield.crypto.he_params`). The weight is one more value. Ciphertexts are
symmetric and seeded (about 46 KB per 4096 slots). CKKS (``scheme="ckks"``): float updates times
``weight / max_weight``, one value per slot, no quantization.

Stages: ``input`` (each site: its ciphertexts) → ``aggregate`` (the server: the summed
ciphertexts; each site decrypts them into :attr:`ClientSession.aggregate`).
"""

from __future__ import annotations

import numpy as np
import tenseal.sealapi as sa

from fedshield import wire
from fedshield.crypto import ring
from fedshield.crypto.he_keys import HEKeyring
from fedshield.crypto.he_params import HEPlan, SealIO
from fedshield.errors import InvalidCiphertext, ProtocolAbort, WrongShape
from fedshield.protocols.base import ClientSession, Revealed, ServerSession

__all__ = ["HEClient", "HEServer", "pack_slots", "unpack_slots"]

PROTOCOL_ID = 3
STAGES = ("input", "aggregate")


# --- packing ----------------------------------------------------------------------------------
def pack_slots(values: np.ndarray, plan: HEPlan) -> np.ndarray:
    """``(n_ciphertexts, slots)`` uint64: value ``i`` goes to ciphertext ``i // (slots·m)``,
    slot ``j % slots`` and field ``j // slots`` (``j`` its index within the ciphertext)."""
    per_ct = plan.slots * plan.per_slot
    padded = np.zeros(plan.n_ciphertexts * per_ct, dtype=np.uint64)
    padded[: values.size] = values
    fields = padded.reshape(plan.n_ciphertexts, plan.per_slot, plan.slots)
    out = np.zeros((plan.n_ciphertexts, plan.slots), dtype=np.uint64)
    for f in range(plan.per_slot):
        out |= fields[:, f, :] << np.uint64(f * plan.value_bits)
    return out


def unpack_slots(slots: np.ndarray, plan: HEPlan, length: int) -> np.ndarray:
    """Inverse of :func:`pack_slots` for the first ``length`` values."""
    mask = np.uint64((1 << plan.value_bits) - 1)
    fields = np.stack(
        [(slots >> np.uint64(f * plan.value_bits)) & mask for f in range(plan.per_slot)], axis=1
    )
    return fields.reshape(-1)[:length]


# --- server -----------------------------------------------------------------------------------
class HEServer(ServerSession):
    """Server side: checks and adds ciphertexts, returns the encrypted sum. Holds no key."""

    protocol_id = PROTOCOL_ID
    stages = STAGES

    def __init__(self, *, round: int, clients, dim: int, plan: HEPlan) -> None:
        super().__init__(round=round, clients=clients, dim=dim)
        if plan.dim != dim:
            raise ValueError(f"the HE plan is for {plan.dim} values, the round has {dim}")
        self.plan = plan
        self.io = SealIO(plan.context())  # public parameters only
        self.evaluator = sa.Evaluator(self.io.context)
        self.sum: list[sa.Ciphertext] | None = None
        self.contributors: list[int] = []
        self.bytes_summed = 0

    def describe(self) -> dict:
        """Scheme, parameters and packing of this round."""
        p = self.plan
        return {
            "scheme": p.scheme,
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
            msg = self._server_message(stage, [self.plan.params_id])
            return {c: msg for c in alive}
        blobs = [self.io.dump(ct) for ct in self.sum]
        fields = [
            self.plan.params_id,
            np.array(self.contributors, dtype=np.uint32),
            np.array([len(b) for b in blobs], dtype=np.uint32),
            b"".join(blobs),
        ]
        msg = self._server_message(stage, fields)
        return {c: msg for c in alive}

    def _receive(self, stage: str, sender: int, message: wire.Message) -> None:
        if stage == "aggregate":
            message.require_fields(0)
            return
        message.require_fields(3)
        if message.raw(0, length=32) != self.plan.params_id:
            raise WrongShape(f"client {sender} encrypted under other parameters")
        ciphertexts = read_ciphertexts(message, 1, self.plan, self.io)
        # Every ciphertext parsed and checked: only now does anything touch the sum.
        if self.sum is None:
            self.sum = ciphertexts
        else:
            for total, ct in zip(self.sum, ciphertexts, strict=True):
                self.evaluator.add_inplace(total, ct)
        self.contributors.append(sender)

    def _close_stage(self, stage: str) -> None:
        if stage == "input" and not self.contributors:
            raise ProtocolAbort(f"round {self.round}: no site delivered a valid ciphertext")

    def _reveal(self) -> Revealed:
        return Revealed(
            contributors=tuple(sorted(self.contributors)),
            weighted_sum=None,
            total_weight=None,
            dropped=tuple(c for c in self.clients if c not in self.contributors),
        )


def read_ciphertexts(
    message: wire.Message, first: int, plan: HEPlan, io: SealIO
) -> list[sa.Ciphertext]:
    """``plan.n_ciphertexts`` ciphertexts from fields ``first`` (sizes) and ``first + 1``
    (concatenated bytes), each checked before any arithmetic."""
    sizes = message.array(first, dtype="<u4", shape=(plan.n_ciphertexts,)).astype(np.int64)
    blob = message.raw(first + 1, length=int(sizes.sum()))
    if (sizes > plan.max_ciphertext_bytes).any():
        raise InvalidCiphertext("a ciphertext is larger than these parameters allow")
    out, offset = [], 0
    for size in sizes:
        out.append(
            io.load_ciphertext(blob[offset : offset + size], max_bytes=plan.max_ciphertext_bytes)
        )
        offset += size
    return out


# --- client -----------------------------------------------------------------------------------
class HEClient(ClientSession):
    """Site side: encrypts its encoded update, then decrypts the summed ciphertexts."""

    protocol_id = PROTOCOL_ID
    stages = STAGES

    def __init__(
        self,
        *,
        client_id: int,
        round: int,
        update: np.ndarray,
        weight: float,
        keyring: HEKeyring,
        quant_seed: int | None = None,
    ) -> None:
        super().__init__(
            client_id=client_id, round=round, update=update, weight=weight, quant_seed=quant_seed
        )
        if update.size != keyring.plan.dim:
            raise ValueError(f"the HE plan is for {keyring.plan.dim} values, got {update.size}")
        self.keyring = keyring
        self.plan = keyring.plan
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
        summed = read_ciphertexts(message, 2, self.plan, self.keyring.io)
        self.aggregate = self._decrypt(summed)
        return self._client_message(stage, [])

    def _encrypt(self) -> list[bytes]:
        k, plan, config = self.keyring, self.plan, self.plan.config
        plaintext = sa.Plaintext()
        blobs = []
        if plan.scheme == "bfv":
            levels = ring.encode(
                self.update, clip=config.clip, quant_bits=config.quant_bits, seed=self.quant_seed
            )
            self.sent = ring.dequantize(levels, clip=config.clip, quant_bits=config.quant_bits)
            weight = ring.integer_weight(self.weight, config.max_weight, config.weight_bits)
            values = np.empty(self.update.size + 1, dtype=np.uint64)
            np.multiply(levels, np.uint64(weight), out=values[:-1], casting="unsafe")
            values[-1] = weight
            for row in pack_slots(values, plan):
                k.encoder.encode(row.tolist(), plaintext)
                blobs.append(k.io.dump(k.encryptor.encrypt_symmetric(plaintext)))
            return blobs
        fraction = min(1.0, self.weight / config.max_weight)
        values = np.zeros(plan.n_ciphertexts * plan.slots, dtype=np.float64)
        values[: self.update.size] = self.update * fraction
        values[self.update.size] = fraction
        self.sent = self.update
        scale = float(2**plan.scale_bits)
        for row in values.reshape(plan.n_ciphertexts, plan.slots):
            k.encoder.encode(row.tolist(), scale, plaintext)
            blobs.append(k.io.dump(k.encryptor.encrypt_symmetric(plaintext)))
        return blobs

    def _decrypt(self, summed: list[sa.Ciphertext]) -> tuple[np.ndarray, float]:
        k, plan, config = self.keyring, self.plan, self.plan.config
        plaintext = sa.Plaintext()
        rows = []
        for ct in summed:
            k.decryptor.decrypt(ct, plaintext)
            if plan.scheme == "bfv":
                rows.append(np.array(k.encoder.decode_uint64(plaintext), dtype=np.uint64))
            else:
                rows.append(np.array(k.encoder.decode_double(plaintext), dtype=np.float64))
        flat = np.stack(rows)
        dim = self.update.size
        if plan.scheme == "ckks":
            values = flat.reshape(-1)
            return values[:dim].copy(), float(values[dim])
        values = unpack_slots(flat, plan, dim + 1)
        self.level_sum = values  # sum_i w_i q_i and sum_i w_i, for auditors
        weight = int(values[-1])
        if weight == 0:
            raise ProtocolAbort("the decrypted total weight is zero")
        mean = ring.decode_mean(values[:-1], weight, clip=config.clip, quant_bits=config.quant_bits)
        return mean.astype(np.float64) * weight, float(weight)
