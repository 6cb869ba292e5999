"""One SMTP connection: moves bytes between the socket and :mod:`taube.proto.smtp`, asks the
policy pipeline (:mod:`taube.policy.pipeline`: who may send what to whom, VRFY/EXPN/ETRN rights)
at each stage and answers the engine's decisions with its verdicts, and writes accepted messages
to the spool. The session makes no policy decision of its own beyond the free-space reserve at
MAIL and the AUTH throttle (:mod:`taube.net.login_throttle`, shared with POP3).

There is no SMTP grammar here. Every wait has a deadline (RFC 5321 4.5.3.2), every transaction
that does not end in ``250`` is aborted in the spool, and an unexpected exception becomes
``451 4.3.0`` with a logged traceback, never a dropped connection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

from ..proto import replies as R
from ..proto.replies import Reply, SMTPError
from ..proto.smtp import (
    NEED_DATA,
    AuthDone,
    AuthLookup,
    AuthStart,
    Closed,
    Connect,
    DataAborted,
    DataChunk,
    DataStart,
    EndOfData,
    Etrn,
    Event,
    Expn,
    Hello,
    MailFrom,
    RcptTo,
    Reset,
    SMTPConfig,
    SMTPConnection,
    StartTLS,
    State,
    Vrfy,
)
from ..proto.trace import received_header, with_protocol
from ..policy.local import LocalPolicy, LocalRules, postmaster_for
from ..policy.pipeline import Context, Pipeline, Recipient, Verdict
from ..queue.bounce import RecipientReport
from ..queue.envelope import Envelope, Target
from ..queue.notify import original_recipient, wants
from ..queue.spool import SpoolFile, StorageError, StorageFullError
from .connection import Connection
from .login_throttle import LoginThrottle
from .services import TLS_HANDSHAKE_TIMEOUT, Services

__all__ = ["Mode", "SMTPSession", "postmaster_address"]

log = logging.getLogger("taube.smtp")
# Closed reasons that are no misbehaviour: not worth a log line.
_ORDINARY_ENDS = frozenset({"quit", "closed", "peer closed the connection"})
REPORT_HEAD_MAX = 64 * 1024  # octets of a message kept for a "delivered" report
# "smtp": port-25 style; "submission": RFC 6409, AUTH before MAIL; "smtps": the same over
# implicit TLS (RFC 8314).
Mode = Literal["smtp", "submission", "smtps"]


def postmaster_address(services: Services) -> str:
    """Where postmaster mail goes (see :func:`postmaster_for`)."""
    return postmaster_for(services.settings, services.directory)


def engine_config(services: Services, mode: Mode) -> SMTPConfig:
    s, auth = services.settings.smtp, services.settings.auth
    return SMTPConfig(
        hostname=services.settings.hostname,
        max_message_size=s.max_message_size,
        max_recipients=s.max_recipients,
        max_errors=s.max_errors,
        normalize_bare_newlines=s.bare_newline == "normalize",
        strict_pipelining=s.strict_pipelining,
        max_header_size=s.max_header_size,
        vrfy=s.vrfy != "off",
        tls_available=services.tls is not None and mode != "smtps",
        tls_active=mode == "smtps",
        auth_mechanisms=tuple(auth.mechanisms),
        auth_requires_tls=auth.require_tls,
        auth_legacy_line=auth.legacy_auth_line,
        auth_required=mode != "smtp",
        etrn=s.etrn != "off",
    )


def default_pipeline(services: Services) -> Pipeline:
    """The checks of a session: those the application assembled, else the site's own rules."""
    if services.pipeline is not None:
        return services.pipeline
    return Pipeline([LocalPolicy(LocalRules.from_settings(services.settings), services.directory,
                                 services.relay, services.state)])


@dataclass(slots=True)
class _Transaction:
    """The per-message state (aiosmtpd's Envelope): reset by RSET, HELO/EHLO and the final reply."""

    sender: MailFrom | None = None
    targets: list[Target] = field(default_factory=list)
    recipients: list[str] = field(default_factory=list)
    queue_id: str = ""
    spool_file: SpoolFile | None = None
    started: float = 0.0
    # The start of the message, kept for a "delivered" report (RFC 3461 NOTIFY=SUCCESS to a
    # local recipient): the report returns the header section only.
    head: bytearray | None = None
    head_start: int = 0  # where the message starts in ``head`` (after taube's Received)
    report_delivered: bool = False  # a local recipient asked for NOTIFY=SUCCESS

    def keep_head(self, data: bytes) -> None:
        if self.head is not None and len(self.head) < REPORT_HEAD_MAX:
            self.head += data[: REPORT_HEAD_MAX - len(self.head)]

    def discard(self) -> None:
        if self.spool_file is not None:
            self.spool_file.abort()
            self.spool_file = None


class SMTPSession:
    """Drive one connection to the end. ``run()`` never raises for anything the peer does."""

    def __init__(self, services: Services, io: Connection, client_ip: str,
                 mode: Mode = "smtp") -> None:
        self.services = services
        self.io = io
        self.client_ip = client_ip
        self.mode = mode
        self.pipeline = default_pipeline(services)
        # With connect-stage checks the engine waits for their verdict before its greeting.
        self.conn = SMTPConnection(dataclasses.replace(
            engine_config(services, mode), connect_decision=self.pipeline.implements("connect")))
        self.tx = _Transaction()
        self.login = LoginThrottle(services, client_ip)
        self.ctx = Context(client_ip=client_ip, mode=mode)  # what the checks see
        self.stopping = False  # set by the listener on shutdown
        self.committing = False  # a commit is running in a worker thread: do not cancel
        self._tarpitted = 0  # errors beyond soft_error_limit whose replies were already delayed

    @property
    def idle(self) -> bool:
        """Between transactions: safe to say 421 and close right away."""
        return self.conn.state in (State.CONNECTED, State.GREETED) and not self.committing

    async def run(self) -> None:
        try:
            await self._loop()
        except ConnectionError:
            pass
        except asyncio.CancelledError:
            if not self.stopping:
                raise
            self._say_goodbye(R.closing(self.services.settings.hostname, "4.3.2", "Service shutting down"))
        finally:
            self.tx.discard()
            await self._close()

    async def _loop(self) -> None:
        conn = self.conn
        await self._connect()
        if not conn.closed:
            await self._greet_delay()
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                await self._flush()
                if self.stopping and self.idle:
                    self._say_goodbye(R.closing(self.services.settings.hostname, "4.3.2", "Service shutting down"))
                    return
                data = await self._read()
                if data is None:
                    return
                self.login.input()
                conn.receive_data(data)
                continue
            if isinstance(event, Closed):
                if event.reason not in _ORDINARY_ENDS:  # a violation: say which, as Postfix logs it
                    log.info("disconnect client=%s: %s", self.client_ip, event.reason)
                await self._flush()
                return
            await self._handle(event)

    async def _read(self) -> bytes | None:
        s = self.services.settings.smtp
        timeout = s.timeout_data_block if self.conn.state is State.DATA else s.timeout_command
        try:
            async with asyncio.timeout(timeout):
                return await self.io.read()
        except TimeoutError:
            self._say_goodbye(R.closing(self.services.settings.hostname, "4.4.2", "Error: timeout exceeded"))
            log.info("timeout client=%s state=%s", self.client_ip, self.conn.state.value)
            return None

    async def _connect(self) -> None:
        """The pipeline's connect stage, before the greeting (only when a check implements it:
        the engine then starts with a Connect decision). A refusal is sent instead of the 220
        and the engine closes; an error in a check is a 421."""
        if not self.pipeline.implements("connect"):
            return
        event = self.conn.next_event()
        assert isinstance(event, Connect), event
        try:
            verdict = await self.pipeline.connect(self._context())
        except Exception:
            log.exception("internal error client=%s event=Connect", self.client_ip)
            self.conn.reject(R.closing(self.services.settings.hostname, "4.3.0", "Error: internal error"))
            return
        if verdict.refused:
            assert verdict.reply is not None
            log.info("reject client=%s %s", self.client_ip, verdict.error())
            self.conn.reject(verdict.reply)
        else:
            self.conn.accept(verdict.reply)

    async def _greet_delay(self) -> None:
        """Postfix postscreen's pregreet test, on port 25 for clients outside trusted_networks:
        wait up to ``greet_delay`` before the 220. Whatever arrives meanwhile goes to the engine
        before its greeting was taken, so it answers ``554 5.5.0`` and closes; nothing the client
        sent runs. Submission and SMTPS serve mail clients, which Postfix never puts behind
        postscreen either, so they greet at once."""
        delay = self.services.settings.smtp.greet_delay
        if delay <= 0 or self.mode != "smtp" or self.services.relay.is_trusted(self.client_ip):
            return
        started = time.monotonic()
        try:
            async with asyncio.timeout(delay):
                data = await self.io.read()  # cancellation-safe: unread bytes stay buffered
        except TimeoutError:
            return  # a polite client: greet it
        if data:
            log.info("pregreet client=%s after=%.3fs octets=%d: %r", self.client_ip,
                     time.monotonic() - started, len(data), data[:48])
        self.conn.receive_data(data)  # b"": the client left before the greeting

    async def _flush(self) -> None:
        await self._tarpit()
        await self.io.send(self.conn.data_to_send())

    async def _tarpit(self) -> None:
        """Postfix's smtpd_soft_error_limit / smtpd_error_sleep_time: past ``soft_error_limit``
        errors, the replies wait ``error_sleep`` for each new error before they are sent. The
        engine ends the session at ``max_errors``, so a session sleeps at most
        (max_errors - soft_error_limit) x error_sleep between two delivered messages."""
        s = self.services.settings.smtp
        beyond = max(0, self.conn.errors - s.soft_error_limit)
        owed = beyond - self._tarpitted
        if owed > 0 and s.error_sleep > 0:
            self._tarpitted = beyond
            await asyncio.sleep(owed * s.error_sleep)

    def _delivered(self) -> None:
        """A message was accepted: the error count starts again, as Postfix counts errors
        "without delivering mail" (a bulk sender's occasional unknown recipient is no attack)."""
        self.conn.errors = 0
        self._tarpitted = 0

    def _say_goodbye(self, reply: Reply) -> None:
        self.conn.close_with(reply)
        out = self.conn.data_to_send()
        if out:
            self.io.write(out)

    async def _close(self) -> None:
        self.io.close()
        try:
            async with asyncio.timeout(5):
                await self.io.wait_closed()
        except TimeoutError:
            self.io.abort()

    # --- events ----------------------------------------------------------------------------
    async def _handle(self, event: Event) -> None:
        try:
            match event:
                case DataChunk():
                    await self._data_chunk(event)
                case Hello():
                    self.conn.accept(self._passed(await self.pipeline.helo(self._context())))
                case MailFrom():
                    await self._mail(event)
                case RcptTo():
                    await self._rcpt(event)
                case DataStart():
                    self._data_start()
                case EndOfData():
                    await self._end_of_data(event)
                case DataAborted():
                    log.info("rejected client=%s from=<%s> reason=%s", self.client_ip,
                             self._sender_text(), event.reply)
                    self._new_transaction()
                case Reset():
                    self._new_transaction()
                case Vrfy():
                    await self._vrfy(event)
                case Expn():
                    await self._expn(event)
                case Etrn():
                    await self._etrn(event)
                case StartTLS():
                    await self._starttls()
                case AuthStart():
                    self._auth_start(event)
                case AuthLookup():
                    await self._auth_lookup(event)
                case AuthDone():
                    await self._auth_done(event)
        except SMTPError as e:
            log.info("reject client=%s %s", self.client_ip, e)
            self.conn.reject(e.reply)
        except Exception:
            log.exception("internal error client=%s event=%s", self.client_ip, type(event).__name__)
            if self.conn.awaiting_decision:
                self.conn.reject(R.TRANSIENT_FAILURE)
            self._new_transaction()

    def _new_transaction(self) -> None:
        self.tx.discard()
        self.tx = _Transaction()
        self.ctx.new_transaction()

    def _context(self, argument: str = "") -> Context:
        """The pipeline's context, brought up to date with the engine's view of the session."""
        ctx, conn = self.ctx, self.conn
        ctx.helo, ctx.esmtp, ctx.tls = conn.helo, conn.esmtp, conn.tls_active
        ctx.user = conn.authenticated
        ctx.tls_info = self._tls_info() if conn.tls_active else None
        ctx.argument = argument
        return ctx

    @staticmethod
    def _passed(verdict: Verdict) -> Reply | None:
        """A stage's positive reply (None: the engine's default); a refusal is raised as the
        SMTPError ``_handle`` answers and logs."""
        if verdict.refused:
            raise verdict.error()
        return verdict.reply

    def _sender_text(self) -> str:
        return self.tx.sender.path.address if self.tx.sender else ""

    async def _mail(self, event: MailFrom) -> None:
        self._new_transaction()
        ctx = self._context()
        ctx.tx.sender, ctx.tx.mail_params, ctx.tx.size = event.path.address, event.params, event.size
        try:
            reply = self._passed(await self.pipeline.mail(ctx))
        except SMTPError:
            ctx.tx.sender = None
            raise
        reserve = self.services.settings.smtp.min_free_space
        if not self.services.spool.space.admits(event.size, reserve):  # Postfix's queue_minfree
            raise SMTPError(Reply(code=452, enhanced="4.3.1", text="Insufficient system storage"),
                            reason=f"free space below min_free_space={reserve} (SIZE={event.size})")
        self.tx.sender = event
        self.conn.accept(reply)

    async def _rcpt(self, event: RcptTo) -> None:
        path = event.path
        ctx = self._context()
        ctx.tx.rcpt = rcpt = Recipient(address=path.address, local=path.local, domain=path.domain)
        try:
            reply = self._passed(await self.pipeline.rcpt(ctx))
        finally:
            ctx.tx.rcpt = None
        address = rcpt.address  # <postmaster> completed by the policy
        targets = rcpt.targets
        if event.notify is not None or event.orcpt is not None:  # RFC 3461: per RCPT, for every target
            targets = [dataclasses.replace(t, notify=event.notify, orcpt=event.orcpt) for t in targets]
        self.tx.targets.extend(targets)
        self.tx.recipients.append(address)
        ctx.tx.recipients.append(address)
        self.conn.accept(reply)

    def _data_start(self) -> None:
        tx = self.tx
        assert tx.sender is not None
        spool = self.services.spool
        tx.queue_id = spool.new_queue_id()
        tx.started = time.time()
        tx.spool_file = spool.open(tx.queue_id, tx.sender.path.address, _unique(tx.targets))
        received = self._received(tx)
        tx.spool_file.write(received)
        tx.report_delivered = bool(tx.sender.path.address) and any(
            wants(t.notify, "SUCCESS") for t in tx.targets if t.kind == "local")
        if tx.report_delivered or self.pipeline.implements("data_end"):
            tx.head = bytearray()
            tx.keep_head(received)
            tx.head_start = len(received)
        self.conn.accept()

    def _received(self, tx: _Transaction) -> bytes:
        assert tx.sender is not None
        return received_header(
            helo=self.conn.helo,
            client_ip=self.client_ip,
            hostname=self.services.settings.hostname,
            protocol=with_protocol(esmtp=self.conn.esmtp, tls=self.conn.tls_active,
                                   auth=self.conn.authenticated is not None, utf8=tx.sender.smtputf8),
            queue_id=tx.queue_id,
            when=datetime.fromtimestamp(tx.started, timezone.utc).astimezone(),
            recipient=tx.recipients[0] if len(tx.recipients) == 1 else None,
            tls_info=self._tls_info(),
        )

    def _tls_info(self) -> str | None:
        """As Postfix writes it: ``using TLSv1.3 with cipher X (256/256 bits)``, plus the
        authenticated user when configured."""
        parts = []
        ssl_object = self.io.extra("ssl_object")
        if isinstance(ssl_object, ssl.SSLObject):
            cipher = ssl_object.cipher()
            if cipher:
                parts.append(f"using {ssl_object.version()} with cipher {cipher[0]} ({cipher[2]}/{cipher[2]} bits)")
        user = self.conn.authenticated
        if user and self.services.settings.auth.received_header_user:
            parts.append(f"Authenticated sender: {user}")
        return "; ".join(parts) or None

    async def _data_chunk(self, event: DataChunk) -> None:
        spool_file = self.tx.spool_file
        if spool_file is not None:
            spool_file.write(event.data)
            self.tx.keep_head(event.data)
            if spool_file.needs_spill:  # file I/O waits on the journal: never on the loop
                await asyncio.get_running_loop().run_in_executor(None, spool_file.spill)

    async def _end_of_data(self, event: EndOfData) -> None:
        tx = self.tx
        assert tx.sender is not None and tx.spool_file is not None
        if not await self._data_end_checks():
            return
        envelope = Envelope(
            queue_id=tx.queue_id,
            sender=tx.sender.path.address,
            targets=_unique(tx.targets),
            client_address=self.client_ip,
            helo=self.conn.helo,
            received_at=tx.started,
            size=tx.spool_file.size,
            params=_envelope_params(tx.sender),
        )
        spool_file, tx.spool_file = tx.spool_file, None
        self.committing = True
        try:
            await asyncio.get_running_loop().run_in_executor(None, spool_file.commit, envelope)
        except StorageError as e:
            # Nothing was stored and the client retries: 452 4.3.1 for a full disk or quota, 451
            # 4.3.0 for any other storage failure (EIO, ...). One log line, no traceback.
            full = isinstance(e, StorageFullError)
            self._log_message(envelope, f"deferred (storage {'full' if full else 'error'}: {e})")
            self.conn.reject(R.STORAGE_FULL if full else R.STORAGE_ERROR)
            self._new_transaction()
            return
        finally:
            self.committing = False
        self._log_message(envelope, "queued")
        self.conn.accept(Reply(code=250, enhanced="2.0.0", text=f"Ok: queued as {tx.queue_id}"))
        self._delivered()
        if envelope.remote and self.services.runner is not None:
            self.services.runner.wake(envelope.queue_id)
        if tx.report_delivered and tx.head is not None:
            self._report_local_delivery(envelope, bytes(tx.head))
        self._new_transaction()

    async def _data_end_checks(self) -> bool:
        """The pipeline's data_end stage, with the message's header section (its first
        REPORT_HEAD_MAX octets at most); header lines the checks leave in ``ctx.tx.prepend`` go
        above Received. False: refused, answered and logged, nothing stored."""
        if not self.pipeline.implements("data_end"):
            return True
        tx, ctx = self.tx, self._context()
        head = bytes(tx.head[tx.head_start:]) if tx.head is not None else b""
        end = head.find(b"\r\n\r\n")
        ctx.tx.header = head if end < 0 else head[:end + 2]
        verdict = await self.pipeline.data_end(ctx)
        if verdict.refused:
            assert verdict.reply is not None
            log.info("reject client=%s from=<%s> %s", self.client_ip, self._sender_text(),
                     verdict.error())
            self.conn.reject(verdict.reply)
            self._new_transaction()
            return False
        if ctx.tx.prepend and tx.spool_file is not None:
            tx.spool_file.prepend(b"".join(ctx.tx.prepend))
        return True

    def _report_local_delivery(self, envelope: Envelope, head: bytes) -> None:
        """RFC 3461 section 5.2.2 / 6.2: NOTIFY=SUCCESS for a recipient delivered into a local
        Maildir gets a "delivered" report. Committed in a worker thread after the 250 (the
        message itself is already safe); a failure is logged, the message stays delivered."""
        reporter = self.services.reporter
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
                if report_id is not None and self.services.runner is not None:
                    self.services.runner.wake(report_id)

        asyncio.get_running_loop().run_in_executor(None, send)

    def _log_message(self, envelope: Envelope, result: str) -> None:
        log.info(
            "%s: client=%s from=<%s> to=%s size=%d nrcpt=%d result=%s",
            envelope.queue_id, self.client_ip, envelope.sender,
            ",".join(f"<{r}>" for r in self.tx.recipients), envelope.size,
            len(envelope.targets), result,
        )

    # --- STARTTLS and AUTH -------------------------------------------------------------------
    async def _starttls(self) -> None:
        tls = self.services.tls
        assert tls is not None  # the engine offers STARTTLS only with a certificate
        self.conn.accept()
        await self._flush()
        await self.io.start_tls(tls.context, TLS_HANDSHAKE_TIMEOUT)
        self.conn.tls_started()
        log.info("TLS established client=%s %s", self.client_ip, self._tls_info() or "")

    def _auth_start(self, event: AuthStart) -> None:
        if self.login.blocked():
            log.warning("auth refused client=%s: too many failures", self.client_ip)
            self.conn.close_with(R.closing(self.services.settings.hostname, "4.7.0",
                                           "Error: too many authentication failures"))
            return
        self.conn.accept()

    async def _auth_lookup(self, event: AuthLookup) -> None:
        # the one look-up path of SMTP and POP3, off the event loop (net/auth_lookup.py)
        self.conn.auth_resolve(await self.login.lookup(event.request))

    async def _auth_done(self, event: AuthDone) -> None:
        if event.user is not None:
            self.login.succeeded()
            log.info("auth ok client=%s user=%s mechanism=%s", self.client_ip, event.user, event.mechanism)
            return
        failures, wait = self.login.failed()
        log.warning("auth failed client=%s mechanism=%s failures=%d: %s", self.client_ip,
                    event.mechanism, failures, event.reason)
        await asyncio.sleep(wait)  # the 535 is queued: it waits too

    async def _vrfy(self, event: Vrfy) -> None:
        reply = self._passed(await self.pipeline.vrfy(self._context(event.argument)))
        self.conn.accept(reply or R.VRFY_AMBIGUOUS)  # no check answered: 252, tells nothing

    async def _expn(self, event: Expn) -> None:
        reply = self._passed(await self.pipeline.expn(self._context(event.argument)))
        if reply is None:  # no check answered
            raise SMTPError(R.EXPN_DISABLED)
        self.conn.accept(reply)

    async def _etrn(self, event: Etrn) -> None:
        """RFC 1985: a queue run for a domain, if this client may ask for one."""
        verdict = await self.pipeline.etrn(self._context(event.node))
        result = verdict.reply if verdict.refused and verdict.reply is not None else self._etrn_reply(event)
        log.info("etrn client=%s node=%s result=%s", self.client_ip, event.node, result)
        if result.is_positive:
            self.conn.accept(result)
        else:
            self.conn.reject(result)

    def _etrn_reply(self, event: Etrn) -> Reply:
        """458 when no run can start (named queues, no queue runner, a failing one), else 251
        (nothing waiting) or 253 (n messages). Whether the client may ask is the pipeline's."""
        node = event.node
        runner = self.services.runner
        if event.queue_name is not None or runner is None:  # no named queues; no queue runner
            return R.etrn_unable(node)
        try:
            count = runner.flush(event.domain, subdomains=event.subdomains)
        except Exception:
            log.exception("etrn failed client=%s node=%s", self.client_ip, node)
            return R.etrn_unable(node)
        return R.etrn_pending(node, count) if count > 0 else R.etrn_nothing_waiting(node)


def _envelope_params(mail: MailFrom) -> dict[str, str]:
    """The MAIL parameters as the envelope keeps them: as given, except RET in upper case and
    ENVID decoded from xtext (RFC 3461 4.3, 4.4)."""
    params = {k: v or "" for k, v in mail.params.items()}
    if mail.ret is not None:
        params["RET"] = mail.ret
    if mail.envid is not None:
        params["ENVID"] = mail.envid
    return params


def _unique(targets: list[Target]) -> tuple[Target, ...]:
    """One copy per final destination, even if two RCPTs (or aliases) lead to it."""
    seen: set[tuple[str, str]] = set()
    out = []
    for t in targets:
        key = (t.kind, t.address)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return tuple(out)
