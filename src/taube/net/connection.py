"""One TCP (or TLS) connection as the sessions see it: read, write, drain, start TLS, close.

An ``asyncio.Protocol`` of our own rather than asyncio streams, for two reasons: the receive
buffer is ours, so STARTTLS can drop every plaintext byte that arrived after the command
before the handshake begins (CVE-2011-0411, CVE-2021-33515 and relatives: nothing a client
sends before TLS is ever executed inside it), and flow control is explicit: reading pauses once
:data:`HIGH_WATER` octets wait unread, so no client can make us buffer without bound.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable

__all__ = ["Connection", "ConnectionClosed"]

log = logging.getLogger("taube.tls")
HIGH_WATER = 256 * 1024  # unread octets before we stop reading from the socket


class ConnectionClosed(ConnectionError):
    """The peer went away while we were writing."""


class Connection(asyncio.Protocol):
    """Created by the listener for each accepted socket; ``handler(conn)`` runs as its task."""

    def __init__(self, handler: Callable[[Connection], Awaitable[None]]) -> None:
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self._buffer = bytearray()
        self._eof = False
        self._closed = False
        self._reading_paused = False
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._writing_paused = False

    # --- the asyncio.Protocol side ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # not again when start_tls hands the protocol over
            # uvloop's transports have asyncio.Transport's methods without subclassing it
            self.transport = transport  # type: ignore[assignment]
            self.task = self._loop.create_task(self._handler(self))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._eof = True
        self._wake_reader()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ConnectionClosed("connection lost"))

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def _wake_reader(self) -> None:
        if self._data_waiter is not None and not self._data_waiter.done():
            self._data_waiter.set_result(None)

    # --- the session side ------------------------------------------------------------------
    @property
    def peer(self) -> tuple[str, int]:
        info = self.transport.get_extra_info("peername") if self.transport else None
        return (str(info[0]), int(info[1])) if info else ("unknown", 0)

    def extra(self, name: str) -> object:
        return self.transport.get_extra_info(name) if self.transport else None

    async def read(self) -> bytes:
        """Everything received so far (waits for at least one byte); ``b""`` at end of input."""
        while not self._buffer and not self._eof:
            self._data_waiter = self._loop.create_future()
            try:
                await self._data_waiter
            finally:
                self._data_waiter = None
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._reading_paused and self.transport and not self._closed:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def send(self, data: bytes) -> None:
        """Write ``data`` (if any) and wait while the peer is slow to read (flow control)."""
        if data:
            self.write(data)
            await self.drain()

    async def drain(self) -> None:
        if self._closed:
            raise ConnectionClosed("connection lost")
        if self._writing_paused:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    async def start_tls(self, context: ssl.SSLContext, timeout: float) -> None:
        """Switch to TLS as the server. Unread plaintext is dropped first; the handshake reads
        from the socket only after this point (``loop.start_tls`` pauses reading at once). A
        failed handshake raises ConnectionClosed: that connection ends, nothing else."""
        assert self.transport is not None
        self._buffer.clear()
        self._eof = False
        try:
            new = await self._loop.start_tls(self.transport, self, context, server_side=True,
                                             ssl_handshake_timeout=timeout)
        except (ssl.SSLError, OSError, TimeoutError) as e:
            log.info("TLS handshake failed client=%s: %s", self.peer[0], e)
            raise ConnectionClosed("TLS handshake failed") from None
        if new is None:
            raise ConnectionClosed("closed during the TLS handshake")
        self.transport = new

    def is_closing(self) -> bool:
        return self._closed or self.transport is None or self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self) -> None:
        while not self._closed:
            self._data_waiter = self._loop.create_future()
            try:
                await self._data_waiter
            finally:
                self._data_waiter = None
