"""What the SecAgg+ server checks when a client says a peer misbehaved: that a holder's
receive key was unusable (``share_keys``), or that a sender's blob was bad or unsigned
(``masked_input``). A true claim costs the peer its place in the round, a false one the
client that made it (:class:`~fedshield.errors.FalseComplaint`). How the evidence works:
:mod:`~fedshield.protocols.secagg.channels`. The protocol, its threat model and the legend:
:mod:`fedshield.protocols.secagg`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedshield.crypto import merkle
from fedshield.crypto.keys import PUBLIC_KEY_BYTES
from fedshield.errors import FalseComplaint, InvalidShare, UnknownSender
from fedshield.protocols.secagg.channels import complaint_holds, receive_key_usable

if TYPE_CHECKING:
    from fedshield import wire
    from fedshield.protocols.secagg.server import SecAggServer

__all__ = ["check_complaints", "check_unusable_claims"]


def check_unusable_claims(server: SecAggServer, sender: int, unusable: list[int], holders):
    """``sender`` says these of its ``holders`` signed unusable receive keys for it: each
    claim must hold (the holders are dropped at the stage's close).

    Raises:
        UnknownSender: it names a client it does not seal to.
        FalseComplaint: a named key is signed and usable.
    """
    s = server
    if len(set(unusable)) != len(unusable) or not set(unusable) <= set(holders) - {sender}:
        raise UnknownSender(f"client {sender} reported keys of clients it does not seal to")
    for h in unusable:  # the server holds every key it relayed, under the signed root
        key, at = s.receive_keys[h][sender], s.clients.index(sender)
        path = merkle.path(s.receive_trees[h], at)
        if receive_key_usable(key, path, root=s.key_signatures[h][1], sender=sender, index=at,
                              count=len(s.clients)):  # fmt: skip
            raise FalseComplaint(f"client {sender} refused client {h}'s sound receive key")
    s.unusable.update(unusable)


def check_complaints(server: SecAggServer, holder: int, message: wire.Message) -> set[int]:
    """The senders ``holder`` complains about at ``masked_input`` (fields 0 to 2 of its
    answer): keyed complaints (a revealed receive key) must prove the blob bad; an unsigned
    one is false (the server checked every deal's signature on arrival).

    Raises:
        UnknownSender: it complains about shares it was not sent.
        FalseComplaint: a complaint does not hold.
    """
    s = server
    accused = message.array(0, dtype="<u4").tolist()
    evidence = message.chunks(1, size=PUBLIC_KEY_BYTES, count=len(accused))
    unsigned = message.array(2, dtype="<u4").tolist()
    complaints = set(accused) | set(unsigned)
    relayed = {c for c in s.mailbox.get(holder, {}) if c in s.shared_keys_survivors}
    if len(complaints) != len(accused) + len(unsigned) or not complaints <= relayed:
        raise UnknownSender(f"client {holder} complained about shares it was not sent")
    for sender, revealed in zip(accused, evidence, strict=True):
        _judge(s, holder, sender, revealed)
    if unsigned:  # every deal's signature was checked on arrival: it is relayed as signed
        raise FalseComplaint(f"client {holder} called the signed deals of {unsigned} unsigned")
    return complaints


def _judge(s: SecAggServer, holder: int, sender: int, revealed: bytes) -> None:
    """Check ``holder``'s complaint about ``sender`` from the receive key it revealed
    (:func:`~fedshield.protocols.secagg.channels.complaint_holds`)."""
    sealed, dealt = s.mailbox[holder][sender]
    try:
        holds = complaint_holds(
            revealed, s.receive_keys[holder][sender], s.channel_public_keys[sender], sealed,
            dealt.commitments, round=s.round, sender=sender, holder=holder,
            threshold=s.threshold,
        )  # fmt: skip
    except InvalidShare as exc:
        raise FalseComplaint(f"client {holder}'s complaint about {sender}: {exc}") from None
    if not holds:
        raise FalseComplaint(
            f"client {holder} complained about client {sender}'s shares, which are sound"
        )
