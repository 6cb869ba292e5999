"""Trace header fields: ``Received:`` (RFC 5321 4.4, RFC 5322 3.6.7) and ``Return-Path:``.

Pure functions: the caller passes the time, so tests pin it.
"""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime

__all__ = ["received_header", "with_protocol"]


def with_protocol(*, esmtp: bool, tls: bool = False, auth: bool = False, utf8: bool = False) -> str:
    """The ``with`` keyword of RFC 3848 (ESMTPS, ESMTPA, ESMTPSA) and RFC 6531 (UTF8SMTP...)."""
    if not esmtp:
        return "SMTP"
    base = "UTF8SMTP" if utf8 else "ESMTP"
    return base + ("S" if tls else "") + ("A" if auth else "")


def received_header(
    *,
    helo: str,
    client_ip: str,
    hostname: str,
    protocol: str,
    queue_id: str,
    when: datetime,
    recipient: str | None = None,
    tls_info: str | None = None,
) -> bytes:
    """``Received: from helo ([ip]) by host (taube) with ESMTP id X for <rcpt>; date``.

    Folded over several lines as Postfix does, each continuation starting with a TAB; ``for`` is
    given only for a single recipient (RFC 5321 4.4 warns against disclosing the others).
    """
    helo = _clean(helo)[:255] or "unknown"
    parts = [f"Received: from {helo} ([{client_ip}])"]
    if tls_info:
        parts.append(f"\t({_clean(tls_info)})")
    parts.append(f"\tby {hostname} (taube) with {protocol} id {queue_id}")
    date = format_datetime(when)
    if recipient is not None:
        parts.append(f"\tfor <{_clean(recipient)}>; {date}")
    else:
        parts[-1] += f"; {date}"
    return ("\r\n".join(parts) + "\r\n").encode("utf-8")


def _clean(text: str) -> str:
    """Keep client-chosen text from breaking the header: no CR, LF, or other controls."""
    if text.isprintable():  # the usual case, checked at C speed
        return text
    return "".join(ch if ch.isprintable() else "?" for ch in text)
