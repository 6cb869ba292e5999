"""The envelope of one accepted message: who sent it, where each copy goes, and how it came in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """One final destination of a message, after alias expansion.

    ``kind`` is ``"local"`` (a Maildir of a local user, ``address`` is that user's address) or
    ``"remote"`` (``address`` goes to the outbound queue). ``original`` is the RCPT TO address
    the client gave (RFC 3461 ORCPT-like bookkeeping and the log).
    """

    kind: Literal["local", "remote"]
    address: str
    original: str
    # RFC 3461 section 4.1 NOTIFY: None when not given (then failures and delays are reported),
    # else ("NEVER",) or a subset of ("SUCCESS", "FAILURE", "DELAY").
    notify: tuple[str, ...] | None = None
    # RFC 3461 section 4.2 ORCPT, decoded from xtext: "rfc822;user@example.org".
    orcpt: str | None = None


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
