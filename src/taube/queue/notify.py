"""RFC 3461 delivery status notification requests, as the SMTP server and the queue runner both
read them (a recipient's NOTIFY and ORCPT)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["original_recipient", "wants"]


def wants(notify: Sequence[str] | None, kind: str) -> bool:
    """Whether a recipient's RFC 3461 NOTIFY asks for a ``kind`` ("SUCCESS", "FAILURE",
    "DELAY") report; without NOTIFY failures and delays are reported (4.1: the MTA's choice)."""
    if notify is None:
        return kind in ("FAILURE", "DELAY")
    return kind in notify


def original_recipient(orcpt: str | None, original: str) -> str | None:
    """A report's Original-Recipient: the ORCPT address if one was given (None if it is of a
    type we cannot show), else the address as given in RCPT TO."""
    if orcpt:
        kind, _, value = orcpt.partition(";")
        return value.strip() if kind.strip().lower() in ("rfc822", "utf-8") and value.strip() else None
    return original
