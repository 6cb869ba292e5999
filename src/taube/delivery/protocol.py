"""aiosmtplib underneath the outbound client, with two changes: every reply is kept, and DATA
content is streamed.

aiosmtplib's reply reader keeps one reply at a time and drops bytes that arrive while a reply
waits to be picked up, which loses replies to pipelined commands (RFC 2920 3.1);
:class:`QueueingProtocol` keeps every complete reply in order. aiosmtplib's DATA takes the whole
message as one ``bytes``; :meth:`QueueingProtocol.execute_data` writes the content chunk by
chunk and waits for the transport to drain after each, so that neither the message nor the
socket's send buffer grows with the message size.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterable, Callable, Sequence

from aiosmtplib import SMTP
from aiosmtplib.errors import (
    SMTPConnectResponseError,
    SMTPDataError,
    SMTPReadTimeoutError,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)
from aiosmtplib.protocol import MAX_RESPONSE_LENGTH, SMTPProtocol
from aiosmtplib.response import SMTPResponse

__all__ = ["MAX_QUEUED_REPLIES", "QueueingProtocol", "QueueingSMTP"]

# Replies kept while commands are outstanding: a pipelined group is MAIL, at most
# [delivery] max_recipients_per_transaction RCPTs and DATA; a peer that sends more than this
# many replies at once is broken or hostile, and must not grow the queue without end.
MAX_QUEUED_REPLIES = 2000


class QueueingProtocol(SMTPProtocol):
    """aiosmtplib's protocol with a reader that keeps every complete reply, in order, so that
    the replies to pipelined commands (RFC 2920 3.1) are never lost or mis-paired. Bytes that
    arrive while no reply is expected are discarded, as in aiosmtplib; so are replies left over
    after the expected ones (RFC 3207 4.2: nothing may follow the 220 to STARTTLS)."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 connection_lost_callback: Callable[[SMTPProtocol], None] | None) -> None:
        super().__init__(loop=loop, connection_lost_callback=connection_lost_callback)
        self._replies: collections.deque[SMTPResponse] = collections.deque()
        self._failure: Exception | None = None
        self._wakeup: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def data_received(self, data: bytes) -> None:
        if not self._response_pending or self._failure is not None:
            return
        self._buffer.extend(data)
        try:
            while (response := self._read_response_from_buffer()) is not None:
                self._replies.append(response)
                if len(self._replies) > MAX_QUEUED_REPLIES:
                    raise SMTPResponseException(-1, "Too many replies")
        except SMTPResponseException as exc:
            self._failure = exc
            del self._buffer[:]
        if len(self._buffer) > MAX_RESPONSE_LENGTH:
            self._failure = SMTPResponseException(-1, "Response too long")
            del self._buffer[:]
        self._wake()

    def eof_received(self) -> bool:
        if self._failure is None:
            self._failure = SMTPServerDisconnected("Unexpected EOF received")
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._failure is None:
            failure = SMTPServerDisconnected("Connection lost")
            failure.__cause__ = exc
            self._failure = failure
        self._wake()
        super().connection_lost(exc)

    async def _next_response(self, timeout: float | None) -> SMTPResponse:
        try:
            async with asyncio.timeout(timeout):
                while not self._replies:
                    if self._failure is not None:
                        raise self._failure
                    self._wakeup = self._loop.create_future()
                    await self._wakeup
        except TimeoutError as exc:
            if isinstance(exc, SMTPTimeoutError):
                raise
            raise SMTPReadTimeoutError("Timed out waiting for server response") from exc
        return self._replies.popleft()

    def _end_reading(self) -> None:
        self._response_pending = False
        self._replies.clear()
        del self._buffer[:]

    async def read_response(self, timeout: float | None = None) -> SMTPResponse:
        """The next reply; anything after it is unsolicited and dropped."""
        self._response_pending = True
        try:
            return await self._next_response(timeout)
        finally:
            self._end_reading()

    async def execute_pipelined(self, commands: Sequence[bytes], timeout: float | None,
                                responses: list[SMTPResponse]) -> None:
        """Write ``commands`` (without CRLF) in one go and append one reply for each, in
        order, to ``responses`` (RFC 2920 3.1)."""
        for command in commands:
            if b"\r" in command or b"\n" in command or b"\0" in command:
                raise ValueError("Command contains a prohibited control character")
        if self._command_lock is None:
            raise SMTPServerDisconnected("Server not connected")
        async with self._command_lock:
            self._response_pending = True
            try:
                self.write(b"".join(command + b"\r\n" for command in commands))
                for _ in commands:
                    responses.append(await self._next_response(timeout))
            finally:
                self._end_reading()

    async def execute_data(self, content: AsyncIterable[bytes], *, reply_timeout: float | None,
                           block_timeout: float | None) -> SMTPResponse:
        """DATA (RFC 5321 4.1.1.4): the command, its 354, then ``content`` (already in wire
        form, ending with the final ``.`` CRLF) chunk by chunk, each written only once the
        transport has room for it again, then the final reply. The replies are each awaited
        for ``reply_timeout``; a chunk that cannot be sent within ``block_timeout`` (RFC 5321
        4.5.3.2.5, a data block) ends the attempt. A 4xx/5xx to either is an
        :class:`SMTPDataError`."""
        if self._command_lock is None:
            raise SMTPServerDisconnected("Server not connected")
        async with self._command_lock:
            self._response_pending = True
            try:
                self.write(b"DATA\r\n")
                start = await self._next_response(reply_timeout)
                if start.code != 354:
                    raise SMTPDataError(start.code, start.message)
                # Replies that arrive while the content is still going out (a server that
                # gives up early) are kept: the first one is the answer to this DATA.
                try:
                    async for chunk in content:
                        self.write(chunk)
                        await self._drained(block_timeout)
                except (SMTPServerDisconnected, OSError):
                    if not self._replies:
                        raise
                    # It answered before it had all the content, then closed: that answer counts.
                response = await self._next_response(reply_timeout)
            finally:
                self._end_reading()
        if response.code != 250:
            raise SMTPDataError(response.code, response.message)
        return response

    async def _drained(self, timeout: float | None) -> None:
        """Wait until the transport's buffer is below its high-water mark (write flow control,
        as StreamWriter.drain does it)."""
        try:
            async with asyncio.timeout(timeout):
                await self._drain_helper()
        except TimeoutError as exc:
            raise SMTPTimeoutError("Timed out sending message content") from exc


class QueueingSMTP(SMTP):
    """aiosmtplib's client on a socket we connected, with the queueing reply reader."""

    tcp_transport: asyncio.BaseTransport | None = None

    async def _create_connection(self, timeout: float | None) -> SMTPResponse:
        assert self.loop is not None and self.sock is not None
        protocol = QueueingProtocol(self.loop, self._on_connection_lost)
        transport, _ = await self.loop.create_connection(lambda: protocol, sock=self.sock)
        self.protocol = protocol
        self.transport = self.tcp_transport = transport
        response = await protocol.read_response(timeout=timeout)
        if response.code != 220:
            raise SMTPConnectResponseError(response.code, response.message)
        return response
