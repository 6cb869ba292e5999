"""The SMTP session's way into the spool: the message of one transaction, from the 354 to the
reply after its commit.

The transaction itself (sender, recipients and their targets, queue id, what the checks added)
is the pipeline's :class:`~taube.policy.pipeline.Transaction`; what is kept here is only what
touches files: the open spool file the DATA chunks stream into, and the start of the message
kept in memory for the data_end checks and for "delivered" reports. The ``250`` is said only
once the message is on stable storage (RFC 5321 6.1: the server takes responsibility for it
then), never for a failed commit.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from typing import TYPE_CHECKING

from ..addressing import Target
from ..policy.pipeline import Transaction
from ..proto import replies as R
from ..proto.replies import Reply
from ..queue.bounce import RecipientReport
from ..queue.envelope import Envelope
from ..queue.notify import original_recipient, wants
from ..queue.spool import SpoolFile, StorageError, StorageFullError
from .offload import COMMITS
from .services import Services

if TYPE_CHECKING:
    from ..signing.dkim import Signer, SigningResult

__all__ = ["REPORT_HEAD_MAX", "Spooler"]

log = logging.getLogger("taube.smtp")
# Octets of a message kept in memory: the header section for the data_end checks and for a
# "delivered" report, which returns the headers only (RFC 3461 section 4.3, RET=HDRS).
REPORT_HEAD_MAX = 64 * 1024


class Spooler:
    """The message of the session's open transaction, if any (one at a time): :meth:`open` at
    DATA, :meth:`write` for each chunk, then :meth:`commit`, or :meth:`discard` whenever the
    transaction ends without a ``250``."""

    def __init__(self, services: Services, client_ip: str, *, header_limit: int = 0) -> None:
        self.services = services
        self.client_ip = client_ip
        self._file: SpoolFile | None = None
        self._head: bytearray | None = None  # the start of the message, when it is wanted
        self._head_complete = False  # _head holds the whole header section
        self._start = 0  # where the client's message starts (after our Received)
        # Octets of the message kept: a report's headers, or the whole header section for the
        # data_end checks (the engine refuses a larger one: [smtp] max_header_size).
        self._head_max = REPORT_HEAD_MAX
        self._header_limit = header_limit

    def open(self, tx: Transaction, received: bytes, *, header_wanted: bool) -> None:
        """DATA was accepted: a spool file for ``tx`` (queue id and targets given), starting
        with taube's ``received`` line. ``header_wanted``: a data_end check reads the header
        section, so it is kept even when no report needs it."""
        assert tx.sender is not None and self._file is None
        self._file = self.services.spool.open(tx.queue_id, tx.sender, tx.targets)
        self._file.write(received)
        self._start = len(received)
        if header_wanted or _reports_delivery(tx.sender, tx.targets):
            self._head = bytearray()
            self._head_complete = False
            self._head_max = len(received) + max(REPORT_HEAD_MAX,
                                                 self._header_limit + 2 if header_wanted else 0)
            self._keep(received)

    async def write(self, data: bytes) -> None:
        """A chunk of DATA, already unstuffed (RFC 5321 4.5.2), in its order."""
        spool_file = self._file
        if spool_file is None:
            return
        spool_file.write(data)
        self._keep(data)
        if spool_file.needs_spill:  # file I/O waits on the journal: never on the loop
            await COMMITS.run(spool_file.spill)

    def _keep(self, data: bytes) -> None:
        """Keep the start of the message up to the empty line that ends the client's header
        section (or ``_head_max`` octets): the checks and a report need no body, and a big
        message is not copied a second time."""
        head = self._head
        if head is None or self._head_complete or len(head) >= self._head_max:
            return
        before = len(head)
        head += data[: self._head_max - before]
        # The empty line: CRLF CRLF, the first CRLF being our Received's last when the client
        # sent no header field at all; looked for only in what is new, and the 3 octets before.
        end = head.find(b"\r\n\r\n", max(self._start - 2, before - 3))
        if end >= 0:
            del head[end + 4:]
            self._head_complete = True

    def header_section(self) -> bytes:
        """The client's header section (RFC 5322 2.1) up to and with the CRLF of its last field
        (without the empty line); empty when it was not kept."""
        head = bytes(self._head[self._start:]) if self._head is not None else b""
        if head.startswith(b"\r\n"):
            return b""  # no header fields at all
        end = head.find(b"\r\n\r\n")
        return head if end < 0 else head[:end + 2]

    def prepend(self, lines: list[bytes]) -> None:
        """Complete header lines to store above taube's Received, in this order."""
        if lines and self._file is not None:
            self._file.prepend(b"".join(lines))

    def drop(self, ranges: list[tuple[int, int]]) -> None:
        """Leave these (start, end) octets of the client's message out of what is stored."""
        if ranges and self._file is not None:
            self._file.drop(ranges, base=self._start)

    async def read_message(self) -> bytes:
        """The client's message as received so far (header section and body, without our
        Received), read back in a worker thread. StorageError when it is gone (a failed spill:
        the commit would fail too)."""
        spool_file, start = self._file, self._start
        assert spool_file is not None

        def read() -> bytes:
            with spool_file.open_content(start) as f:
                return f.read()

        return await COMMITS.run(read)

    async def sign(self, signer: Signer, sender: str) -> SigningResult:
        """The DKIM signatures for the client's message (RFC 6376), made in a worker thread
        from the spool (the signer reads the header, then the body in chunks)."""
        spool_file, start = self._file, self._start
        assert spool_file is not None

        def sign() -> SigningResult:
            with spool_file.open_content(start) as f:
                return signer.sign(f, sender=sender)

        return await COMMITS.run(sign)

    def discard(self) -> None:
        """The transaction ended without a ``250``: nothing of it stays in the spool."""
        if self._file is not None:
            self._file.abort()
            self._file = None
        self._head = None

    async def commit(self, tx: Transaction, *, helo: str) -> Reply:
        """Make the message durable (in a worker thread: it waits for fsync) and say what the
        client is told: ``250 2.0.0 Ok: queued as <id>``, or for a failed commit ``452 4.3.1``
        (full disk or quota) or ``451 4.3.0`` (any other storage failure), after which nothing
        is stored and the client retries. After a ``250`` the queue runner is woken for remote
        targets and the "delivered" reports are sent."""
        spool_file, self._file = self._file, None
        head, self._head = self._head, None
        assert tx.sender is not None and spool_file is not None
        envelope = Envelope(
            queue_id=tx.queue_id,
            sender=tx.sender,
            targets=tx.targets,
            client_address=self.client_ip,
            helo=helo,
            received_at=tx.received_at,
            size=spool_file.size,
            params=dict(tx.mail_params),
        )
        try:
            await COMMITS.run(spool_file.commit, envelope)
        except StorageError as e:  # one log line, no traceback
            full = isinstance(e, StorageFullError)
            self._log(tx, envelope, f"deferred (storage {'full' if full else 'error'}: {e})")
            return R.STORAGE_FULL if full else R.STORAGE_ERROR
        self._log(tx, envelope, "queued")
        runner = self.services.runner
        if envelope.remote and runner is not None:
            runner.wake(envelope.queue_id)
        if head is not None and _reports_delivery(envelope.sender, envelope.targets):
            self._report_local_delivery(envelope, bytes(head))
        return Reply(code=250, enhanced="2.0.0", text=f"Ok: queued as {tx.queue_id}")

    def _report_local_delivery(self, envelope: Envelope, head: bytes) -> None:
        """RFC 3461 section 5.2.2 / 6.2: NOTIFY=SUCCESS for a recipient delivered into a local
        Maildir gets a "delivered" report. Committed in a worker thread after the 250 (the
        message itself is already safe); a failure is logged, the message stays delivered."""
        reporter, runner = self.services.reporter, self.services.runner
        if reporter is None:
            return
        now = time.time()
        reports = [
            RecipientReport(address=t.address, original=original_recipient(t.orcpt, t.original), action="delivered",
                            status="2.0.0", diagnostic=None, remote_mta=None, last_attempt=now)
            for t in envelope.local if wants(t.notify, "SUCCESS")
        ]

        def send() -> None:
            try:
                report_id = reporter.send(to=envelope.sender, queue_id=envelope.queue_id,
                                          arrival=envelope.received_at, reports=reports,
                                          original=io.BytesIO(head), return_content="headers",
                                          envid=envelope.params.get("ENVID"))
            except Exception:
                log.exception("%s: the delivery report to <%s> failed", envelope.queue_id,
                              envelope.sender)
            else:
                if report_id is not None and runner is not None:
                    runner.wake(report_id)

        asyncio.get_running_loop().run_in_executor(None, send)

    def _log(self, tx: Transaction, envelope: Envelope, result: str) -> None:
        log.info(
            "%s: client=%s from=<%s> to=%s size=%d nrcpt=%d result=%s",
            envelope.queue_id, self.client_ip, envelope.sender,
            ",".join(f"<{r.address}>" for r in tx.recipients), envelope.size,
            len(envelope.targets), result,
        )


def _reports_delivery(sender: str, targets: tuple[Target, ...]) -> bool:
    """A local target asked for NOTIFY=SUCCESS (RFC 3461 4.1) and there is a sender to tell."""
    return bool(sender) and any(wants(t.notify, "SUCCESS") for t in targets if t.kind == "local")
