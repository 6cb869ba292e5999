"""What the SMTP and POP3 sessions share: the loop that moves bytes between the socket and a
sans-I/O engine, the deadline on every read, STARTTLS/STLS, and how a session ends.

A session ends in one of four ways, the same for both protocols:

* the engine is done (QUIT, too many errors, the peer closed): its last replies are flushed,
  and an end that is a violation is logged;
* a read outlasts its deadline (RFC 5321 4.5.3.2, the autologout timer of RFC 1939 section 3):
  the engine's timeout reply is written;
* the server shuts down: the listener sets ``stopping`` and cancels an idle session at once, a
  busy one after the grace period, one that is ``committing`` never; the engine's shutdown reply
  is written (a session that becomes idle while stopping says it by itself);
* the peer goes away while we write (ConnectionError): there is nothing left to say.

Whichever it is, the protocol's own resources are released first (the open transaction, the
mailbox lock), then the connection is closed within :data:`CLOSE_TIMEOUT`: a client that stops
reading cannot keep it open.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Generic, Literal, Protocol, TypeVar

from ..config import AuthSettings
from ..proto.common import NEED_DATA
from .connection import Connection
from .deadline import ReadDeadline
from .login_throttle import LoginThrottle
from .services import TLS_HANDSHAKE_TIMEOUT, Services

__all__ = ["CLOSE_TIMEOUT", "EngineSession", "Goodbye"]

CLOSE_TIMEOUT = 5.0  # seconds the last replies get to leave before the connection is aborted
# Why a session says its last reply itself; the engine's own endings come as its Closed event.
Goodbye = Literal["timeout", "shutdown"]
# Closed reasons that are no misbehaviour: not worth a log line.
_ORDINARY_ENDS = frozenset({"quit", "closed", "peer closed the connection"})


class _Engine(Protocol):
    """What the shared loop uses of an engine: :class:`~taube.proto.common.Engine`'s run loop
    and bytes, and the accept()/tls_started() of a STARTTLS or STLS decision."""

    state: Any
    closed_type: type

    def next_event(self) -> Any: ...

    def receive_data(self, data: bytes) -> None: ...

    def data_to_send(self) -> bytes: ...

    def accept(self) -> None: ...

    def tls_started(self) -> None: ...


E = TypeVar("E", bound=_Engine)


class EngineSession(Generic[E]):
    """Drive one connection to the end; ``run()`` never raises for anything the peer does.

    A protocol's session sets ``conn`` (its engine) in its constructor and supplies
    :meth:`_handle` (the engine's events), :meth:`_read_timeout` and :meth:`_goodbye` (what the
    engine says last on a timeout or at shutdown); :meth:`_begin` and :meth:`_release` when it
    has something to do before the first read or after the last. ``stopping``, ``committing``
    and ``idle`` are what the listener (:class:`~taube.net.listener.Session`) reads and sets."""

    conn: E
    log: logging.Logger

    def __init__(self, services: Services, io: Connection, client_ip: str, *,
                 auth: AuthSettings) -> None:
        self.services = services
        self.io = io
        self.client_ip = client_ip
        # the failed-login penalty of this connection, one rule for SMTP AUTH and POP3
        self.login = LoginThrottle(services, client_ip, auth=auth)
        self.stopping = False  # set by the listener on shutdown
        self.committing = False  # durable work in a worker thread: the listener never cuts it
        self._deadline: ReadDeadline | None = None  # made by the first read, in the session's task

    @property
    def idle(self) -> bool:
        """Safe to say goodbye and close right away."""
        return not self.committing

    async def run(self) -> None:
        try:
            await self._loop()
        except ConnectionError:
            pass  # the peer is gone: nothing left to say
        except asyncio.CancelledError:
            if not self.stopping:
                raise
            self._say_goodbye("shutdown")
        finally:
            if self._deadline is not None:
                self._deadline.close()
            self._release()
            await self._close()

    async def _loop(self) -> None:
        await self._begin()
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                await self._flush()
                if self.stopping and self.idle:  # its work finished after the shutdown began
                    self._say_goodbye("shutdown")
                    return
                data = await self._read()
                if data is None:
                    return
                self.login.input()
                conn.receive_data(data)
            elif isinstance(event, conn.closed_type):
                if event.reason not in _ORDINARY_ENDS:  # a violation: say which, as Postfix logs it
                    self.log.info("disconnect client=%s: %s", self.client_ip, event.reason)
                await self._flush()
                return
            else:
                await self._handle(event)

    async def _read(self) -> bytes | None:
        """What the peer sent, within the read deadline; None when the deadline passed (the
        engine's timeout reply is then written)."""
        deadline = self._deadline or self._new_deadline()
        deadline.start(self._read_timeout())
        try:
            return await self.io.read()
        except asyncio.CancelledError:
            if not deadline.expired():
                raise
            self.log.info("timeout client=%s state=%s", self.client_ip, self.conn.state.value)
            self._say_goodbye("timeout")
            return None
        finally:
            deadline.stop()

    def _new_deadline(self) -> ReadDeadline:
        self._deadline = ReadDeadline()
        return self._deadline

    async def _flush(self) -> None:
        """Send what the engine queued; waits while the peer is slow to read."""
        await self.io.send(self.conn.data_to_send())

    def _say_goodbye(self, why: Goodbye) -> None:
        """The engine's last reply for ``why``, written without waiting for the peer to read
        it: the close that follows gives it :data:`CLOSE_TIMEOUT` to leave."""
        self._goodbye(why)
        out = self.conn.data_to_send()
        if out:
            self.io.write(out)

    async def _close(self) -> None:
        self.io.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.io.wait_closed()
        except TimeoutError:
            self.io.abort()

    async def _start_tls(self) -> None:
        """STARTTLS (RFC 3207) or STLS (RFC 2595): the go-ahead leaves in plaintext, then the
        handshake; the engine forgets everything said before it. A failed handshake ends the
        session (ConnectionError)."""
        tls = self.services.tls
        assert tls is not None  # the engines offer TLS only with a certificate
        self.conn.accept()
        await self._flush()
        await self.io.start_tls(tls.context, TLS_HANDSHAKE_TIMEOUT)
        self.conn.tls_started()

    # --- what each protocol supplies -------------------------------------------------------
    async def _begin(self) -> None:
        """Before the first read (after the engine queued its greeting, if it did)."""

    def _release(self) -> None:
        """The session is over, however it ended: give back what it holds."""

    def _read_timeout(self) -> float:
        raise NotImplementedError

    def _goodbye(self, why: Goodbye) -> None:
        """Have the engine queue its last reply for ``why`` and close."""
        raise NotImplementedError

    async def _handle(self, event: Any) -> None:
        raise NotImplementedError
