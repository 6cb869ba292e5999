"""Listening sockets: one task per connection, per-client limits, a graceful drain on shutdown.

The listener knows nothing of SMTP: it is given a factory that turns an accepted connection into
a session object with ``run()``, ``idle``, ``stopping`` and ``committing``, and a function that
writes the refusal for a connection over the limits.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from ..config import parse_listen
from ..sharedstate import SharedState
from .connection import Connection

__all__ = ["Listener", "Session"]

log = logging.getLogger("taube.listener")


class Session(Protocol):
    stopping: bool
    committing: bool

    @property
    def idle(self) -> bool: ...

    async def run(self) -> None: ...


SessionFactory = Callable[[Connection, str], Session]
# client address -> (total, per client; None: exempt), read at each accept: reloadable
Limits = Callable[[str], tuple[int, int | None]]


class Listener:
    """All the sockets of one service (``smtp``, later ``submission``, ``pop3`` ...)."""

    def __init__(self, name: str, addresses: Iterable[str], factory: SessionFactory,
                 state: SharedState, limits: Limits, refuse: Callable[[str], bytes],
                 tls: Callable[[], ssl.SSLContext] | None = None, counted_as: str | None = None,
                 sockets: Sequence[socket.socket] | None = None) -> None:
        """``tls``: for implicit TLS (RFC 8314), returns the current server context.
        ``counted_as``: the service whose connection limits this listener shares (smtp,
        submission and smtps count as "smtp"; pop3 and pop3s as "pop3"); default its name.
        ``sockets``: listening sockets bound already (a worker process is given them by its
        supervisor, server/sockets.py); None: bind ``addresses`` here."""
        self.name = name
        self.counted_as = counted_as or name
        self._tls = tls
        self.addresses = list(addresses)
        self._factory = factory
        self._state = state
        self._limits = limits
        self._refuse = refuse
        self._sockets = sockets
        self._servers: list[asyncio.Server] = []
        self._sessions: dict[asyncio.Task[None], Session] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._sockets is not None:
            for sock in self._sockets:
                server = await loop.create_server(
                    lambda: Connection(self._accept), sock=sock, backlog=512,
                    ssl=self._tls() if self._tls else None,
                    ssl_handshake_timeout=30.0 if self._tls else None)
                self._servers.append(server)
                log.debug("%s accepting on %s", self.name, sock.getsockname()[:2])
            return
        for address in self.addresses:
            host, port = parse_listen(address)
            server = await loop.create_server(
                lambda: Connection(self._accept), host, port, reuse_address=True, backlog=512,
                family=socket.AF_INET6 if ":" in host else socket.AF_UNSPEC,
                ssl=self._tls() if self._tls else None, ssl_handshake_timeout=30.0 if self._tls else None,
            )
            self._servers.append(server)
            log.info("%s listening on %s", self.name, address)

    @property
    def bound(self) -> list[tuple[str, int]]:
        return [s.getsockname()[:2] for srv in self._servers for s in srv.sockets]

    async def _accept(self, conn: Connection) -> None:
        client_ip = conn.peer[0]
        total, per_client = self._limits(client_ip)
        refusal = self._state.open_connection(client_ip, total_limit=total, per_client_limit=per_client,
                                              service=self.counted_as)
        if refusal is not None:
            log.warning("%s refused client=%s: %s", self.name, client_ip, refusal)
            await _refuse(conn, self._refuse(refusal))
            return
        task = asyncio.current_task()
        assert task is not None
        session = self._factory(conn, client_ip)
        self._sessions[task] = session
        try:
            await session.run()
        except Exception:
            log.exception("%s session crashed client=%s", self.name, client_ip)
        finally:
            del self._sessions[task]
            self._state.close_connection(client_ip, service=self.counted_as)

    async def stop(self, grace: float) -> None:
        """Stop accepting; say 421 to idle sessions now, give busy ones ``grace`` seconds to
        finish their transaction, then 421 to the rest (a commit in progress always finishes)."""
        for server in self._servers:
            server.close()
        for task, session in list(self._sessions.items()):
            session.stopping = True
            if session.idle:
                task.cancel()
        if self._sessions:
            _, pending = await asyncio.wait(list(self._sessions), timeout=grace)
            for task in pending:
                session = self._sessions.get(task)
                if session is None or not session.committing:
                    task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=max(grace, 5.0))
        for server in self._servers:
            await server.wait_closed()


async def _refuse(conn: Connection, message: bytes) -> None:
    try:
        conn.write(message)
        async with asyncio.timeout(5):
            await conn.drain()
            conn.close()
            await conn.wait_closed()
    except (ConnectionError, TimeoutError, OSError):
        conn.abort()
