"""The ``he`` server session: adds ciphertexts it cannot read (threat model: the package)."""

from __future__ import annotations

import weakref
from functools import partial

import numpy as np
import tenseal.sealapi as sa

from fedshield import wire
from fedshield._validate import check_instance, check_int
from fedshield.crypto.seal import SealIO
from fedshield.errors import ProtocolAbort, WrongShape
from fedshield.protocols.base import Revealed, ServerSession, broadcasts, closes, receives
from fedshield.protocols.he.common import (
    PROTOCOL_ID,
    STAGES,
    HEStage,
    load_ciphertexts,
    read_sizes,
)
from fedshield.protocols.he.forked import (
    ForkedObject,
    LocalObject,
    shared_array,
    split_range,
    worker_count,
)
from fedshield.protocols.he.params import HEPlan
from fedshield.protocols.he.reports import SumReports

__all__ = ["CiphertextSum", "HEServer"]


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
        check_instance("plan", plan, HEPlan, "from plan_for or the key setup")
        if plan.dim != dim:
            raise ValueError(f"plan: it is for {plan.dim} values, the round has dim={dim}")
        self.plan = plan
        workers = check_int("workers", workers, low=1, optional=True)
        self.ranges = split_range(plan.n_ciphertexts, worker_count(workers, plan.n_ciphertexts))
        self.parts: list = []
        self.inbox = np.empty(0, np.uint8)  # made (shared) when the input stage opens
        self._closer = weakref.finalize(self, _close_all, self.parts)
        self.contributors: list[int] = []
        self.reports = SumReports(plan)  # a count session's decrypted sums
        self.reported: np.ndarray | None = None

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
        if stage == HEStage.INPUT:
            return 256 + self.plan.n_ciphertexts * (4 + self.plan.max_ciphertext_bytes)
        return 256 + self.reports.max_bytes()

    @broadcasts(HEStage.INPUT)
    def _ask_for_input(self, stage: str) -> dict[int, bytes]:
        self._start_parts()
        msg = self._server_message(stage, [self.plan.params_id])
        return dict.fromkeys(sorted(self.alive), msg)

    @broadcasts(HEStage.AGGREGATE)
    def _send_aggregate(self, stage: str) -> dict[int, bytes]:
        sizes, sums = self._collect_sums()
        message = [self.plan.params_id, np.array(self.contributors, np.uint32), sizes, sums]
        msg = self._server_message(stage, message)
        return dict.fromkeys(sorted(self.alive), msg)

    def _collect_sums(self) -> tuple[np.ndarray, memoryview]:
        """The summed ciphertexts' sizes and their bytes back to back (the workers end)."""
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
        return np.concatenate(part_sizes), self.inbox[:offset].data

    def _start_parts(self) -> None:
        plan = self.plan
        self.inbox = shared_array((plan.n_ciphertexts * plan.max_ciphertext_bytes,), np.uint8)
        holder = LocalObject if len(self.ranges) == 1 else ForkedObject
        for lo, hi in self.ranges:
            self.parts.append(holder(partial(CiphertextSum, plan, lo, hi, self.inbox)))

    @receives(HEStage.AGGREGATE)
    def _take_receipt(self, stage: str, sender: int, message: wire.Message) -> None:
        self.reports.take(sender, message)

    @closes(HEStage.AGGREGATE)
    def _check_receipts(self, stage: str) -> None:
        """A site acknowledges only an aggregate it decrypted and accepted; when none did
        (every site refused a sum off the grid, say), the round produced nothing."""
        if not self.alive:
            raise ProtocolAbort(f"round {self.round}: no site accepted the aggregate")
        self.reported = self.reports.agreed(self.round, self.alive, len(self.contributors))

    @receives(HEStage.INPUT)
    def _take_input(self, stage: str, sender: int, message: wire.Message) -> None:
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

    @closes(HEStage.INPUT)
    def _close_input(self, stage: str) -> None:
        if not self.contributors:
            self._closer()
            raise ProtocolAbort(f"round {self.round}: no site delivered a valid ciphertext")

    def _reveal(self) -> Revealed:
        total = None if self.reported is None else float(len(self.contributors))
        return Revealed(
            contributors=tuple(sorted(self.contributors)),
            weighted_sum=self.reported,  # a count session's sum, as the sites reported it
            total_weight=total,
            dropped=tuple(c for c in self.clients if c not in self.contributors),
        )


def _close_all(parts: list) -> None:
    for part in parts:
        part.close(wait=False)
    parts.clear()
