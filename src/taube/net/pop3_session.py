"""One POP3 connection: moves bytes between the socket and :mod:`taube.proto.pop3`, and turns
its decisions into directory look-ups, a mailbox lock and Maildir reads and deletions.

No POP3 grammar here. Every wait has a deadline (the RFC 1939 autologout timer), the mailbox lock
is released whatever happens, and a dropped connection deletes nothing (the engine only asks for
an UPDATE after QUIT).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import time

from ..config import AuthSettings, POP3Settings
from ..proto import sasl
from ..proto.pop3 import (
    ApopLogin,
    AuthLookup,
    Event,
    Login,
    LoginFailed,
    MailboxOpen,
    POP3Config,
    POP3Connection,
    Retrieve,
    StartTLS,
    Update,
)
from ..store.mailbox import Mailbox, MessageContent
from .connection import Connection, ConnectionClosed
from .services import Services
from .session import EngineSession, Goodbye

__all__ = ["POP3Session"]

log = logging.getLogger("taube.pop3")
SMALL_MESSAGE = 128 * 1024  # read on the event loop up to this size (see _retrieve)
# Octets read (in a worker thread) and written at a time for larger messages: several times
# asyncio's 64 KiB write-buffer high-water mark, so each write fills the socket and the next
# read overlaps the wait for the client, and few enough that memory stays flat per connection.
CHUNK = 256 * 1024
# RFC 3206 4: a temporary condition, not these credentials (the right password is refused too)
BLOCKED = "[SYS/TEMP] too many authentication failures, try again later"


class ContentAborted(ConnectionClosed):
    """A RETR/TOP answer cannot be finished (the message became unreadable, or the client
    stopped reading): the connection ends without the final dot."""


def _discard(future: asyncio.Future[bytes]) -> None:
    """Collect the outcome of a read nobody waits for any more (no "never retrieved" log)."""
    if not future.cancelled():
        future.exception()


class POP3Session(EngineSession[POP3Connection]):
    """Drive one POP3 connection to the end (the loop, deadlines and close are
    :class:`~taube.net.session.EngineSession`'s).

    Configured by the sections it owns, ``[pop3]`` and ``[auth]``, and the host name; from
    ``services`` it takes the directory, the shared state, the maildrops and TLS."""

    log = log  # the module's logger, for the shared loop's lines too

    def __init__(self, services: Services, io: Connection, client_ip: str, *, pop3: POP3Settings,
                 auth: AuthSettings, hostname: str, implicit_tls: bool = False) -> None:
        super().__init__(services, io, client_ip, auth=auth)
        self.timeout = pop3.timeout
        self.conn = POP3Connection(POP3Config(
            hostname=hostname,
            # RFC 1939 7: unique per greeting, "<process-ID.clock@hostname>"
            timestamp=f"<{os.getpid()}.{secrets.randbelow(10**9)}.{int(time.time())}@{hostname}>",
            tls_available=services.tls is not None and not implicit_tls,
            tls_active=implicit_tls,
            sasl_mechanisms=tuple(auth.mechanisms),
            plaintext_requires_tls=pop3.plaintext_requires_tls,
            user_command=pop3.user_command,
            apop=auth.legacy_secrets,
            max_errors=pop3.max_errors,
        ))
        self.mailbox: Mailbox | None = None
        self.locked: str | None = None

    def _read_timeout(self) -> float:
        return self.timeout  # RFC 1939 3: the autologout timer, restarted by every input

    def _goodbye(self, why: Goodbye) -> None:
        # RFC 1939 3: on the autologout timer nothing is deleted (no UPDATE without QUIT)
        self.conn.close_with("autologout timer expired" if why == "timeout" else "server shutting down")

    def _release(self) -> None:
        if self.locked is not None:
            self.services.state.unlock_mailbox(self.locked)
            self.locked = None

    async def _handle(self, event: Event) -> None:
        match event:
            case Retrieve():  # by far the most frequent: first
                await self._retrieve(event)
            case Login():
                await self._login(event)
            case ApopLogin():
                await self._apop(event)
            case AuthLookup():
                await self._auth_lookup(event)
            case LoginFailed():
                await self._login_failed(event)
            case MailboxOpen():
                await self._open(event)
            case StartTLS():
                await self._start_tls()
            case Update():
                await self._update(event)

    # --- authorization ---------------------------------------------------------------------
    def _refuse_if_blocked(self) -> bool:
        """An address blocked after too many failures is told so and disconnected before any
        credentials are checked, as SMTP answers 421 (the same throttle, see login_throttle)."""
        if not self.login.blocked():
            return False
        log.warning("login refused client=%s: too many failures", self.client_ip)
        self.conn.close_with(BLOCKED)
        return True

    async def _login(self, event: Login) -> None:
        if self._refuse_if_blocked():
            return
        ok = await self.login.lookup(sasl.CheckPassword(authcid=event.user, authzid="",
                                                        password=event.password))
        self.conn.accept() if ok else self.conn.reject()

    async def _apop(self, event: ApopLogin) -> None:
        """RFC 1939 7: MD5(timestamp + secret); an unknown user costs the same MD5."""
        if self._refuse_if_blocked():
            return
        secret = await self.login.lookup(sasl.NeedSecret(username=event.user))
        assert secret is None or isinstance(secret, str)
        expected = hashlib.md5((event.timestamp + (secret or secrets.token_hex(16))).encode("utf-8")).hexdigest()
        if secret is not None and hmac.compare_digest(expected, event.digest.lower()):
            self.conn.accept()
        else:
            self.conn.reject()

    async def _auth_lookup(self, event: AuthLookup) -> None:
        if self._refuse_if_blocked():
            return
        self.conn.auth_resolve(await self.login.lookup(event.request))

    async def _login_failed(self, event: LoginFailed) -> None:
        """Throttled exactly like SMTP AUTH failures: the same counter per client address."""
        failures, wait = self.login.failed()
        log.warning("login failed client=%s user=%s failures=%d: %s", self.client_ip, event.user,
                    failures, event.reason)
        await asyncio.sleep(wait)  # the -ERR is queued: it waits too

    async def _open(self, event: MailboxOpen) -> None:
        user = event.user.lower()
        state = self.services.state
        if not state.lock_mailbox(user):
            self.conn.reject("[IN-USE] mailbox locked by another POP3 session")
            return
        self.locked = user
        mailbox = self.services.mailboxes(user)
        try:
            listing = await asyncio.get_running_loop().run_in_executor(None, mailbox.load)
        except OSError as e:
            log.error("cannot open mailbox of %s: %s", user, e)
            self.conn.reject("[SYS/TEMP] cannot open the mailbox, try again later")
            return
        self.mailbox = mailbox
        self.conn.accept_mailbox([(m.size, m.uid) for m in listing])
        self.login.succeeded()
        state.pop_login(self.client_ip)  # SMTP-after-POP
        log.info("login client=%s user=%s messages=%d", self.client_ip, user, len(listing))

    # --- transaction -----------------------------------------------------------------------
    async def _retrieve(self, event: Retrieve) -> None:
        """RETR and TOP (RFC 1939 section 7): the message read in large chunks, each chunk one
        write, the engine stuffing and cutting it (no work per line here).

        A message of up to :data:`SMALL_MESSAGE` octets is read on the event loop (from the page
        cache, one read costs less than a round trip through a worker thread) and leaves with
        its ``+OK`` and the final dot in a single write. A larger one is read :data:`CHUNK`
        octets at a time in a worker thread, the next chunk while the last one drains."""
        mailbox = self.mailbox
        assert mailbox is not None
        message = mailbox.messages[event.number - 1]
        small = message.size <= SMALL_MESSAGE
        try:
            content = mailbox.open(message)
        except OSError as e:
            log.error("cannot read message %s: %s", message.uid, e)
            self.conn.reject("[SYS/TEMP] cannot read the message")
            return
        try:
            try:
                # size + 1: the read that comes back short is the one that finds the end
                first = (content.read(message.size + 1) if small else
                         await asyncio.get_running_loop().run_in_executor(None, content.read, CHUNK))
            except OSError as e:
                log.error("cannot read message %s: %s", message.uid, e)
                self.conn.reject("[SYS/TEMP] cannot read the message")
                return
            self.conn.accept()
            if content.at_end:  # the usual case: the whole message in one read, one write
                self.conn.send_content(first)
                self.conn.end_content()
                if self._write():
                    await self._drain()
            else:
                await self._stream(content, first, message.uid)
        finally:
            content.close()
        if event.lines is None:  # RETR sent it all; TOP is a look, not a reading
            mailbox.seen(message)

    async def _stream(self, content: MessageContent, chunk: bytes, uid: str) -> None:
        """Send the accepted message from ``chunk`` on and end it; stop reading as soon as TOP
        has its lines."""
        conn = self.conn
        loop = asyncio.get_running_loop()
        while True:
            conn.send_content(chunk)
            if content.at_end or not conn.wants_content:
                break
            ahead = loop.run_in_executor(None, content.read, CHUNK)
            try:
                if self._write():
                    await self._drain()
            except BaseException:
                ahead.add_done_callback(_discard)  # content.close() waits for the read itself
                raise
            try:
                chunk = await ahead
            except OSError as e:
                # Part of the message is out: no -ERR is possible, and the final dot would pass
                # the part off as the whole message. Closing without it tells the client.
                log.error("cannot read message %s, closing: %s", uid, e)
                raise ContentAborted(uid) from e
        conn.end_content()
        if self._write():  # the last chunk and the final dot: one write
            await self._drain()

    def _write(self) -> bool:
        """Write what the engine queued; True unless all of it went straight into the socket
        (then there is nothing to wait for, and no coroutine is needed to find that out)."""
        self.io.write(self.conn.data_to_send())
        transport = self.io.transport
        return transport is None or transport.is_closing() or transport.get_write_buffer_size() > 0

    async def _drain(self) -> None:
        """Wait while the client is slow to read, but only as long as the autologout timer
        (RFC 1939 section 3): a client that stops reading in the middle of a message is treated
        as one that stopped talking."""
        try:
            async with asyncio.timeout(self.timeout):
                await self.io.drain()
        except TimeoutError:
            log.info("timeout client=%s: not reading the message", self.client_ip)
            raise ContentAborted("client stopped reading") from None

    async def _update(self, event: Update) -> None:
        """RFC 1939 6: only now are the messages marked with DELE removed."""
        assert self.mailbox is not None
        if not event.deleted_uids:  # nothing to remove: no thread, no fsync
            self.conn.accept()
            return
        by_uid = {m.uid: m for m in self.mailbox.messages}
        doomed = [by_uid[uid] for uid in event.deleted_uids]
        self.committing = True
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.mailbox.delete, doomed)
        except OSError as e:
            log.error("UPDATE failed for %s: %s", self.locked, e)
            self.conn.reject()
            return
        finally:
            self.committing = False
        log.info("update client=%s user=%s deleted=%d", self.client_ip, self.locked, len(doomed))
        self.conn.accept()
