"""``reject/<mode>/<kind>``: a bad message from one site is refused with a typed error, and the
honest round still completes exactly over the others.

Site 1's answer at one stage is replaced, on its way to the server, by:

- ``tampered``: a change a check must see: a bit of its signed public key (``secagg``, at
  ``advertise_keys``), of its ciphertext's SEAL header (``he-shared``), of its signed digests
  (``he-threshold``, at ``digest``); ``plain`` has no integrity, so its header names another
  site as the sender;
- ``replayed``: the same message twice (the first counts, the copy is refused, nobody drops);
- ``replayed-old-round``: its message of the same stage in an earlier round;
- ``relabelled-old-round`` (``secagg`` at ``share_keys``, ``he-threshold`` at ``digest``,
  where a signature covers the message): its earlier round's message under this round's
  header, which only the signature's binding to the round (and the round's keys) can tell;
- ``truncated``: its message less its last byte;
- ``oversized``: its message with a well-framed extra field of at least 64 KiB.

A count session (``*-counts``) is checked as its run mode is, at the same stages (its report
of the decrypted sum: :mod:`fedshield.audit.counts`).

``he-threshold`` decrypts with every site's share (n-of-n), and ``he-threshold-t`` (2 of 3)
with a fixed set of sites once the sum is fixed: where a refused site cannot be left out, the
round ends with a typed abort and nothing revealed, and the next round must be exact.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedshield import wire
from fedshield.audit.bed import COUNT_MODES, MODES, AuditBed, run_mode
from fedshield.audit.checks import CheckFailed, register
from fedshield.audit.fuzz import tolerates
from fedshield.errors import InvalidMessage

__all__ = ["KINDS", "PARTY"]

KINDS = ("tampered", "replayed", "replayed-old-round", "relabelled-old-round", "truncated",
         "oversized")  # fmt: skip
PARTY = 1  # the site whose message goes bad
_STAGE = {"plain": "input", "plain-q8": "input", "secagg": "masked_input",
          "he-shared": "input", "he-threshold": "input", "he-threshold-t": "input"}  # fmt: skip
_SIGNED = {"secagg": "share_keys", "he-threshold": "digest",
           "he-threshold-t": "digest"}  # signed answers  # fmt: skip


def _flip(index: int, what: str) -> tuple[str, Callable[[bytes], bytes]]:
    """A tamper that flips the lowest bit of field ``index``'s first byte."""

    def tamper(data: bytes) -> bytes:
        message = wire.parse(data)
        fields = list(message.fields)
        value = fields[index]
        raw = bytearray(value.tobytes() if isinstance(value, np.ndarray) else bytes(value))
        raw[0] ^= 1
        if isinstance(value, np.ndarray):
            fields[index] = np.frombuffer(bytes(raw), value.dtype).reshape(value.shape)
        else:
            fields[index] = bytes(raw)
        return wire.serialize(message.header, fields)

    return what, tamper


def _other_sender(data: bytes) -> bytes:
    h = wire.parse(data).header
    forged = wire.Header(h.protocol, h.stage, h.round, h.sender + 1)
    return wire.serialize(forged, list(wire.parse(data).fields))


_TAMPER: dict[str, tuple[str, tuple[str, Callable[[bytes], bytes]]]] = {
    "plain": ("input", ("its header names another site as the sender", _other_sender)),
    "plain-q8": ("input", ("its header names another site as the sender", _other_sender)),
    "secagg": ("advertise_keys", _flip(0, "a bit flipped in its signed public key")),
    "he-shared": ("input", _flip(2, "a bit flipped in its ciphertext's SEAL header")),
    "he-threshold": ("digest", _flip(0, "a bit flipped in its signed digests")),
    "he-threshold-t": ("digest", _flip(0, "a bit flipped in its signed digests")),
}
for _table in (_STAGE, _SIGNED, _TAMPER):  # a count session's messages are its run mode's
    _table.update({m: _table[run_mode(m)] for m in COUNT_MODES if run_mode(m) in _table})


def _oversized(data: bytes) -> bytes:
    message = wire.parse(data)
    padding = bytes(max(1 << 16, 2 * len(data)))
    return wire.serialize(message.header, [*message.fields, padding])


def _earlier(bed: AuditBed, mode: str, stage: str) -> bytes:
    """Site :data:`PARTY`'s answer at ``stage`` in a fresh honest round."""
    kept: list[bytes] = []

    def keep(direction: str, s: str, party: int, data: bytes) -> None:
        if (direction, s, party) == ("up", stage, PARTY):
            kept.append(data)

    bed.run(bed.round(mode), hook=keep)
    if not kept:
        raise CheckFailed(f"an honest round never reached '{stage}' for site {PARTY}")
    return kept[0]


def _bad_message(mode: str, kind: str, bed: AuditBed):
    """``(stage, what, hook)``: the stage, a description, and the hook that swaps site
    :data:`PARTY`'s answer there."""
    stage = _STAGE[mode]
    if kind == "tampered":
        stage, (what, change) = _TAMPER[mode]
    elif kind == "replayed":
        what, change = "the same message twice", lambda d: d
    elif kind == "truncated":
        what, change = "its last byte cut off", lambda d: d[:-1]
    elif kind == "oversized":
        what, change = "a well-framed extra field of 64 KiB or more", _oversized
    else:  # the site's message from an honest earlier round, as it was or relabelled
        stage = _SIGNED.get(mode, stage) if kind == "relabelled-old-round" else stage
        old = _earlier(bed, mode, stage)
        if kind == "replayed-old-round":
            what, change = "its message from an earlier round", lambda d: old
        else:
            what = "its earlier round's message under this round's header"
            change = lambda d: wire.serialize(wire.parse(d).header, list(wire.parse(old).fields))  # noqa: E731

    def hook(direction: str, s: str, party: int, data: bytes) -> list[bytes] | None:
        if (direction, s, party) != ("up", stage, PARTY):
            return None
        return [data, data] if kind == "replayed" else [change(data)]

    return stage, what, hook


def _reject(mode: str, kind: str, bed: AuditBed, rng: np.random.Generator, quick: bool) -> str:
    stage, what, hook = _bad_message(mode, kind, bed)
    r = bed.round(mode)
    driven = bed.run(r, hook=hook)
    if driven.crashes:
        crash = driven.crashes[0]
        raise CheckFailed(f"{what} at '{stage}': crashed with {type(crash).__name__}: {crash}")
    errors = [d.error for d in driven.hooked()]
    if not errors:
        raise CheckFailed(f"the round never reached '{stage}': {driven.aborted}")
    if kind == "replayed":
        if errors[0] is not None:
            raise CheckFailed(f"the first copy was refused: {errors[0]!r}")
        errors = errors[1:]
    error = errors[0]
    if error is None:
        raise CheckFailed(f"{what} at '{stage}': accepted")
    if not isinstance(error, InvalidMessage):
        raise CheckFailed(f"{what} at '{stage}': {type(error).__name__} ({error}), not a typed "
                          "rejection (InvalidMessage) that drops only its sender")  # fmt: skip
    refused = f"{what} at '{stage}': {type(error).__name__}"
    survivors = set(r.clients) - (set() if kind == "replayed" else {PARTY})
    problem = r.mismatch(driven.revealed, survivors)
    if problem is None:
        return f"{refused}; the round completed exactly over sites {sorted(survivors)}"
    if tolerates(mode, stage) or driven.revealed is not None:
        raise CheckFailed(f"{refused}, but the honest round is not exact over sites "
                          f"{sorted(survivors)}: {driven.aborted or problem}")  # fmt: skip
    after = bed.round(mode)
    again = bed.run(after)
    problem = after.mismatch(again.revealed, after.clients)
    if problem is not None:
        raise CheckFailed(f"{refused}; the next honest round failed: {again.aborted or problem}")
    return f"{refused}; the round ended, by design ({driven.aborted}); the next one was exact"


for _mode in MODES:
    for _kind in KINDS if _mode in _SIGNED else [k for k in KINDS if k != "relabelled-old-round"]:
        register(
            f"reject/{_mode}/{_kind}",
            f"{_mode}: a {_kind} message is refused",
            lambda bed, rng, quick, m=_mode, k=_kind: _reject(m, k, bed, rng, quick),
        )
