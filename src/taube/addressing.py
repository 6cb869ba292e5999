"""Where the copies of a message go: the value that recipient resolution (``directory``) produces
and the queue keeps, so that neither layer imports the other for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Target"]


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
