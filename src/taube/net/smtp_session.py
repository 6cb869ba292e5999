"""One SMTP connection: moves bytes between the socket and :mod:`taube.proto.smtp`, asks the
policy pipeline (:mod:`taube.policy.pipeline`: who may send what to whom, VRFY/EXPN/ETRN rights)
at each stage and answers the engine's decisions with its verdicts; accepted messages go to the
spool through :mod:`taube.net.smtp_spooler`. The session makes no policy decision of its own
beyond the free-space reserve at MAIL and the AUTH throttle (:mod:`taube.net.login_throttle`,
shared with POP3).

There is no SMTP grammar here. The open transaction is the pipeline's record (``ctx.tx``): the
checks and the session read and write the same sender and recipients. Every wait has a deadline
(RFC 5321 4.5.3.2; the loop is :class:`~taube.net.session.EngineSession`'s), every transaction
that does not end in ``250`` is discarded from the spool, and an unexpected exception becomes
``451 4.3.0`` with a logged traceback, never a dropped connection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import time
from datetime import datetime, timezone
from typing import Literal

from ..config import AuthSettings, SMTPSettings
from ..proto import replies as R
from ..proto.replies import Reply, SMTPError
from ..proto.smtp import (
    AuthDone,
    AuthLookup,
    AuthStart,
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
from ..policy.pipeline import Context, Recipient, Transaction, Verdict
from ..queue.spool import StorageError, StorageFullError
from .connection import Connection
from .services import Services
from .session import EngineSession, Goodbye
from .smtp_spooler import Spooler

__all__ = ["Mode", "SMTPSession", "engine_config"]

log = logging.getLogger("taube.smtp")
# "smtp": port-25 style; "submission": RFC 6409, AUTH before MAIL; "smtps": the same over
# implicit TLS (RFC 8314).
Mode = Literal["smtp", "submission", "smtps"]


def engine_config(smtp: SMTPSettings, auth: AuthSettings, hostname: str, mode: Mode, *,
                  tls_available: bool, connect_decision: bool = False) -> SMTPConfig:
    """The engine's configuration from the sections a session owns. ``tls_available``: a
    certificate is there; ``connect_decision``: a check implements the connect stage, so the
    engine waits for its verdict before greeting."""
    return SMTPConfig(
        hostname=hostname,
        max_message_size=smtp.max_message_size,
        max_recipients=smtp.max_recipients,
        max_errors=smtp.max_errors,
        normalize_bare_newlines=smtp.bare_newline == "normalize",
        strict_pipelining=smtp.strict_pipelining,
        max_header_size=smtp.max_header_size,
        vrfy=smtp.vrfy != "off",
        tls_available=tls_available and mode != "smtps",
        tls_active=mode == "smtps",
        auth_mechanisms=tuple(auth.mechanisms),
        auth_requires_tls=auth.require_tls,
        auth_legacy_line=auth.legacy_auth_line,
        auth_required=mode != "smtp",
        etrn=smtp.etrn != "off",
        connect_decision=connect_decision,
    )


def _envelope_params(mail: MailFrom) -> dict[str, str]:
    """The MAIL parameters as the transaction and the envelope keep them: as given, except RET
    in upper case and ENVID decoded from xtext (RFC 3461 4.3, 4.4)."""
    params = {k: v or "" for k, v in mail.params.items()}
    if mail.ret is not None:
        params["RET"] = mail.ret
    if mail.envid is not None:
        params["ENVID"] = mail.envid
    return params


class SMTPSession(EngineSession[SMTPConnection]):
    """Drive one SMTP connection to the end; ``run()`` never raises for anything the peer does.

    Configured by the sections it owns: ``[smtp]`` (the limits every SMTP service shares; the
    ``[submission]`` and ``[smtps]`` sections only say where to listen), ``[auth]`` and the host
    name. From ``services`` it takes the pipeline, the spool, the relay's trusted networks, TLS,
    the queue runner and the reporter."""

    log = log  # the module's logger, for the shared loop's lines too

    def __init__(self, services: Services, io: Connection, client_ip: str, *, smtp: SMTPSettings,
                 auth: AuthSettings, hostname: str, mode: Mode = "smtp") -> None:
        super().__init__(services, io, client_ip, auth=auth)
        self.smtp = smtp
        self.auth = auth
        self.hostname = hostname
        self.mode = mode
        self.pipeline = services.pipeline
        # With connect-stage checks the engine waits for their verdict before its greeting.
        self.conn = SMTPConnection(engine_config(
            smtp, auth, hostname, mode, tls_available=services.tls is not None,
            connect_decision=self.pipeline.implements("connect")))
        self.ctx = Context(client_ip=client_ip, mode=mode)  # what the checks see
        # The open transaction's spool file.
        self.spooler = Spooler(services, client_ip, header_limit=smtp.max_header_size)
        self._tarpitted = 0  # errors beyond soft_error_limit whose replies were already delayed

    @property
    def tx(self) -> Transaction:
        """The open transaction: the pipeline's record, the one the checks see."""
        return self.ctx.tx

    @property
    def idle(self) -> bool:
        """Between transactions: safe to say 421 and close right away."""
        return self.conn.state in (State.CONNECTED, State.GREETED) and not self.committing

    def _read_timeout(self) -> float:
        s = self.smtp
        return s.timeout_data_block if self.conn.state is State.DATA else s.timeout_command

    def _goodbye(self, why: Goodbye) -> None:
        if why == "timeout":
            self.conn.close_with(R.closing(self.hostname, "4.4.2", "Error: timeout exceeded"))
        else:
            self.conn.close_with(R.closing(self.hostname, "4.3.2", "Service shutting down"))

    def _release(self) -> None:
        self.spooler.discard()

    async def _begin(self) -> None:
        await self._connect()
        if not self.conn.closed:
            await self._greet_delay()

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
            self.conn.reject(R.closing(self.hostname, "4.3.0", "Error: internal error"))
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
        delay = self.smtp.greet_delay
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
        await super()._flush()

    async def _tarpit(self) -> None:
        """Postfix's smtpd_soft_error_limit / smtpd_error_sleep_time: past ``soft_error_limit``
        errors, the replies wait ``error_sleep`` for each new error before they are sent. The
        engine ends the session at ``max_errors``, so a session sleeps at most
        (max_errors - soft_error_limit) x error_sleep between two delivered messages."""
        s = self.smtp
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

    # --- events ----------------------------------------------------------------------------
    async def _handle(self, event: Event) -> None:
        try:
            match event:
                case DataChunk():
                    await self.spooler.write(event.data)
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
                             self.tx.sender or "", event.reply)
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

    def _new_transaction(self) -> Transaction:
        self.spooler.discard()
        return self.ctx.new_transaction()

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

    # --- the transaction -------------------------------------------------------------------
    async def _mail(self, event: MailFrom) -> None:
        tx = self._new_transaction()
        tx.sender, tx.mail_params, tx.size = event.path.address, _envelope_params(event), event.size
        try:
            reply = self._passed(await self.pipeline.mail(self._context()))
            reserve = self.smtp.min_free_space
            if not self.services.spool.space.admits(event.size, reserve):  # Postfix's queue_minfree
                raise SMTPError(Reply(code=452, enhanced="4.3.1", text="Insufficient system storage"),
                                reason=f"free space below min_free_space={reserve} (SIZE={event.size})")
        except SMTPError:
            tx.sender = None  # refused: no transaction is open
            raise
        self.conn.accept(reply)

    async def _rcpt(self, event: RcptTo) -> None:
        path, tx = event.path, self.tx
        tx.rcpt = rcpt = Recipient(address=path.address, local=path.local, domain=path.domain)
        try:
            reply = self._passed(await self.pipeline.rcpt(self._context()))
        finally:
            tx.rcpt = None
        if event.notify is not None or event.orcpt is not None:  # RFC 3461: per RCPT, for every target
            rcpt.targets = [dataclasses.replace(t, notify=event.notify, orcpt=event.orcpt)
                            for t in rcpt.targets]
        tx.recipients.append(rcpt)  # its address as the policy completed it (<postmaster>)
        self.conn.accept(reply)

    def _data_start(self) -> None:
        tx = self.tx
        tx.queue_id = self.services.spool.new_queue_id()
        tx.received_at = time.time()
        self.spooler.open(tx, self._received(tx), header_wanted=self.pipeline.implements("data_end"))
        self.conn.accept()

    def _received(self, tx: Transaction) -> bytes:
        return received_header(
            helo=self.conn.helo,
            client_ip=self.client_ip,
            hostname=self.hostname,
            protocol=with_protocol(esmtp=self.conn.esmtp, tls=self.conn.tls_active,
                                   auth=self.conn.authenticated is not None, utf8=tx.smtputf8),
            queue_id=tx.queue_id,
            when=datetime.fromtimestamp(tx.received_at, timezone.utc).astimezone(),
            recipient=tx.recipients[0].address if len(tx.recipients) == 1 else None,
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
        if user and self.auth.received_header_user:
            parts.append(f"Authenticated sender: {user}")
        return "; ".join(parts) or None

    async def _end_of_data(self, event: EndOfData) -> None:
        if not await self._data_end_checks():
            return
        self.committing = True  # the listener's drain never cuts a commit
        try:
            reply = await self.spooler.commit(self.tx, helo=self.conn.helo)
        finally:
            self.committing = False
        if reply.is_positive:
            self.conn.accept(reply)
            self._delivered()
        else:
            self.conn.reject(reply)
        self._new_transaction()

    async def _data_end_checks(self) -> bool:
        """The pipeline's data_end stage, with the message's header section and a way to read
        the whole message; then DKIM signing for trusted and authenticated clients. Header lines
        the checks leave in ``ctx.tx.prepend`` (and the signatures) go above Received, the
        fields in ``ctx.tx.drop`` are left out. False: refused, answered and logged, nothing
        stored."""
        ctx = self._context()
        try:
            if self.pipeline.implements("data_end"):
                ctx.tx.header = self.spooler.header_section()
                ctx.tx.message = self.spooler.read_message
                try:
                    verdict = await self.pipeline.data_end(ctx)
                finally:
                    ctx.tx.message = None
                if verdict.refused:
                    assert verdict.reply is not None
                    log.info("reject client=%s from=<%s> %s", self.client_ip, ctx.tx.sender or "",
                             verdict.error())
                    self.conn.reject(verdict.reply)
                    self._new_transaction()
                    return False
                self.spooler.drop(ctx.tx.drop)
            signatures = await self._sign(ctx)
        except StorageError as e:  # the message could not be read back: the commit cannot work
            log.info("%s: client=%s from=<%s> result=deferred (storage error: %s)",
                     ctx.tx.queue_id, self.client_ip, ctx.tx.sender or "", e)
            self.conn.reject(R.STORAGE_FULL if isinstance(e, StorageFullError) else R.STORAGE_ERROR)
            self._new_transaction()
            return False
        self.spooler.prepend(signatures + ctx.tx.prepend)
        return True

    async def _sign(self, ctx: Context) -> list[bytes]:
        """DKIM-Signature lines for mail from trusted networks and authenticated users whose
        From: (or envelope sender) domain has a key (RFC 6376; signing/dkim.py decides which)."""
        signer = self.services.signer
        if signer is None or ctx.tx.sender is None or not signer.applies(
                client_ip=self.client_ip, user=ctx.user):
            return []
        result = await self.spooler.sign(signer, ctx.tx.sender)
        for error in result.errors:
            log.warning("%s: DKIM signing for %s: %s", ctx.tx.queue_id, result.domain, error)
        if result.signatures:
            log.info("%s: DKIM-Signature d=%s s=%s", ctx.tx.queue_id, result.domain,
                     ",".join(sig.selector for sig in result.signatures))
        return [result.header] if result.header else []

    # --- STARTTLS and AUTH -------------------------------------------------------------------
    async def _starttls(self) -> None:
        await self._start_tls()
        log.info("TLS established client=%s %s", self.client_ip, self._tls_info() or "")

    def _auth_start(self, event: AuthStart) -> None:
        if self.login.blocked():
            log.warning("auth refused client=%s: too many failures", self.client_ip)
            self.conn.close_with(R.closing(self.hostname, "4.7.0",
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

