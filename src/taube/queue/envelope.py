"""The envelope of one accepted message: who sent it, where each copy goes, and how it came in."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..addressing import Target  # defined below the directory, which produces it; kept importable here

__all__ = ["Arrival", "Envelope", "Target"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Arrival:
    """One accepted message as it arrived, declared once for the two records that carry it: the
    :class:`Envelope` the spool commits and the outbound queue's entry (``QueueEntry`` in
    :mod:`taube.queue.store`), which keeps these fields under the same names on disk.

    ``client_address`` and ``helo`` name the client it came from (as the Received: line does,
    RFC 5321 section 4.4; ``taube queue show`` prints them); ``received_at`` is the Arrival-Date
    of a delivery status notification (RFC 3464 section 2.2.5).
    """

    queue_id: str
    sender: str  # "" for the null reverse-path <>
    client_address: str
    helo: str
    received_at: float  # time.time() when DATA started (a report made here: when it was made)
    size: int  # octets of the message as written (trace headers included), after Return-Path
    # MAIL parameters: BODY, SMTPUTF8, and RFC 3461's RET ("FULL"/"HDRS") and ENVID (decoded
    # from xtext), all as text.
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope(Arrival):
    """Everything the spool needs to commit a message; built by the SMTP session at end of DATA."""

    targets: tuple[Target, ...]

    @property
    def local(self) -> tuple[Target, ...]:
        return tuple(t for t in self.targets if t.kind == "local")

    @property
    def remote(self) -> tuple[Target, ...]:
        return tuple(t for t in self.targets if t.kind == "remote")
