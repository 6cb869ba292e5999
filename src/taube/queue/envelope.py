"""The envelope of one accepted message: who sent it, where each copy goes, and how it came in."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..addressing import Target  # defined below the directory, which produces it; kept importable here

__all__ = ["Envelope", "Target"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """Everything the spool needs to commit a message; built by the SMTP session at end of DATA."""

    queue_id: str
    sender: str  # "" for the null reverse-path <>
    targets: tuple[Target, ...]
    client_address: str
    helo: str
    received_at: float  # time.time() when DATA started
    size: int  # octets of the message as written (trace headers included)
    # MAIL parameters: BODY, SMTPUTF8, and RFC 3461's RET ("FULL"/"HDRS") and ENVID (decoded
    # from xtext), all as text.
    params: dict[str, str] = field(default_factory=dict)

    @property
    def local(self) -> tuple[Target, ...]:
        return tuple(t for t in self.targets if t.kind == "local")

    @property
    def remote(self) -> tuple[Target, ...]:
        return tuple(t for t in self.targets if t.kind == "remote")
