"""Sending delivery status notifications: build one with :func:`build_dsn`, then put it into the
mail system like any accepted message, from the null sender ``<>``.

A report for a local sender lands in that user's Maildir at once; a report for a remote sender
goes into the outbound queue and is delivered by the queue runner like other mail. Both are
committed durably before :meth:`Reporter.send` returns, so that the queue entry they report on
can be updated (and removed) afterwards without a window in which a crash loses the report.

A report never causes another report to its own sender (RFC 3461 section 6.2, RFC 5321 section
6.1): reports are sent from ``<>``; when one of them fails in turn, the queue runner sees the null
sender and tells the postmaster (or only the log), once, and a failed notice to the postmaster is
only logged. The kind of a generated message is recorded in its queue entry's ``params`` under
:data:`NOTICE_PARAM`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import BinaryIO

from ..config import Settings
from ..directory.base import Directory
from ..directory.resolve import resolve_recipient
from ..policy.local import postmaster_for  # re-exported: where postmaster mail goes
from ..queue.bounce import RecipientReport, ReturnContent, build_dsn
from ..queue.envelope import Envelope
from ..queue.notify import original_recipient, wants  # re-exported (RFC 3461 NOTIFY, ORCPT)
from ..queue.spool import Spool

__all__ = ["NOTICE_PARAM", "Reporter", "original_recipient", "postmaster_for", "wants"]

log = logging.getLogger("taube.delivery")

# Queue-entry parameter marking a message this server generated: "dsn" (a report to a sender) or
# "postmaster" (a notice to the postmaster about mail from <> that failed).
NOTICE_PARAM = "X-NOTICE"


class Reporter:
    """Builds reports and submits them; blocking (file I/O and fsync): call it in a worker thread.
    ``settings`` may be replaced on reload (the postmaster address follows it)."""

    def __init__(self, spool: Spool, directory: Directory, settings: Settings) -> None:
        self.spool = spool
        self.directory = directory
        self.settings = settings
        self.hostname = settings.hostname

    def postmaster(self) -> str:
        return postmaster_for(self.settings, self.directory)

    def send(self, *, to: str, queue_id: str, arrival: float, reports: Sequence[RecipientReport],
             original: BinaryIO, return_content: ReturnContent, envid: str | None,
             notice: str = "dsn") -> str | None:
        """Build the report on ``reports`` for ``to`` and commit it; its queue id, or None when
        ``to`` cannot receive mail (a local address without user: logged)."""
        now = time.time()
        message = build_dsn(
            reporting_mta=self.hostname, original_sender=to, queue_id=queue_id, arrival=arrival,
            reports=reports, original=original, return_content=return_content, envid=envid, now=now,
        )
        return self.submit(to, message, notice=notice, about=queue_id)

    def submit(self, to: str, message: bytes, *, notice: str, about: str) -> str | None:
        """Commit ``message`` (CRLF, complete with its header) from ``<>`` to ``to``."""
        resolution = resolve_recipient(self.directory, to)
        if resolution.status == "unknown_user":
            log.warning("%s: report to <%s> dropped: no such local user", about, to)
            return None
        targets = resolution.targets  # each destination once already
        queue_id = self.spool.new_queue_id()
        params = {NOTICE_PARAM: notice}
        if not message.isascii():
            params["BODY"] = "8BITMIME"
        spool_file = self.spool.open(queue_id, "", targets)
        try:
            spool_file.write(message)
            spool_file.commit(Envelope(
                queue_id=queue_id, sender="", targets=targets, client_address="127.0.0.1",
                helo=self.hostname, received_at=time.time(), size=len(message), params=params,
            ))
        except BaseException:
            spool_file.abort()
            raise
        log.info("%s: report %s to=<%s> (%s)", about, queue_id, to, notice)
        return queue_id

