"""The reply reader and the streamed DATA under the outbound client, over a transport in memory:
replies to pipelined commands (RFC 2920 3.1) whatever the packets, and content written only as
fast as the transport drains."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import pytest
from aiosmtplib.errors import SMTPDataError, SMTPTimeoutError
from aiosmtplib.response import SMTPResponse

from taube.delivery.protocol import QueueingProtocol

T = TypeVar("T")
DEADLINE = 10.0


class _Transport(asyncio.Transport):
    """Collects what the protocol writes."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written.extend(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(DEADLINE * 2):
            return await coro

    return asyncio.run(bounded())


async def connected() -> tuple[QueueingProtocol, _Transport]:
    protocol = QueueingProtocol(asyncio.get_running_loop(), None)
    transport = _Transport()
    protocol.connection_made(transport)
    protocol.data_received(b"220 hi\r\n")
    assert (await protocol.read_response(1)).code == 220
    return protocol, transport


async def until(predicate: Any) -> None:
    """Let the loop run until ``predicate()`` holds (within the test's deadline)."""
    while not predicate():
        await asyncio.sleep(0)


def test_reader_keeps_replies_split_and_merged_across_packets() -> None:
    """RFC 2920 3.1: every reply to a pipelined group, however the packets fall."""

    async def go() -> tuple[list[SMTPResponse], bytes]:
        protocol, transport = await connected()
        protocol.data_received(b"250 unsolicited\r\n")  # nothing pending: dropped
        out: list[SMTPResponse] = []
        task = asyncio.create_task(protocol.execute_pipelined(
            [b"MAIL FROM:<>", b"RCPT TO:<a@b>", b"RCPT TO:<c@d>", b"RCPT TO:<e@f>"], DEADLINE, out))
        await asyncio.sleep(0)
        protocol.data_received(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n55")  # two and a half
        protocol.data_received(b"0-5.1.1 no\r\n")  # a continuation line only
        protocol.data_received(b"550 5.1.1 such user\r\n450 4.2.0 later\r\n250 extra\r\n")
        await asyncio.wait_for(task, DEADLINE)
        transport.close()
        protocol.connection_lost(None)
        return out, bytes(transport.written)

    out, written = run(go())
    assert written == b"MAIL FROM:<>\r\nRCPT TO:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\n"
    assert [(r.code, r.message) for r in out] == [
        (250, "2.1.0 Ok"), (250, "2.1.5 Ok"), (550, "5.1.1 no\n5.1.1 such user"), (450, "4.2.0 later")]


def test_data_writes_the_next_chunk_only_once_the_transport_drained() -> None:
    pulled: list[int] = []

    async def content() -> AsyncIterator[bytes]:
        for n in range(3):
            pulled.append(n)
            yield b"chunk %d\r\n" % n
        yield b".\r\n"

    async def go() -> tuple[SMTPResponse, bytes]:
        protocol, transport = await connected()
        task = asyncio.create_task(protocol.execute_data(content(), reply_timeout=DEADLINE,
                                                         block_timeout=DEADLINE))
        await until(lambda: transport.written.endswith(b"DATA\r\n"))
        protocol.pause_writing()  # the transport's buffer is full from the first chunk on
        protocol.data_received(b"354 go ahead\r\n")
        await until(lambda: pulled == [0])
        for _ in range(10):  # the task has every chance to run on, and must not
            await asyncio.sleep(0)
        assert pulled == [0] and transport.written.endswith(b"chunk 0\r\n")
        protocol.resume_writing()
        await until(lambda: transport.written.endswith(b".\r\n"))
        protocol.data_received(b"250 2.0.0 queued\r\n")
        return await task, bytes(transport.written)

    response, written = run(go())
    assert (response.code, response.message) == (250, "2.0.0 queued")
    assert written.endswith(b"DATA\r\nchunk 0\r\nchunk 1\r\nchunk 2\r\n.\r\n")


def test_data_gives_a_transport_that_never_drains_the_block_timeout() -> None:
    async def go() -> None:
        protocol, _ = await connected()
        protocol.pause_writing()

        async def content() -> AsyncIterator[bytes]:
            yield b"never drained\r\n"
            yield b".\r\n"

        task = asyncio.create_task(protocol.execute_data(content(), reply_timeout=DEADLINE,
                                                         block_timeout=0.05))
        await asyncio.sleep(0)
        protocol.data_received(b"354 go ahead\r\n")
        with pytest.raises(SMTPTimeoutError, match="sending message content"):
            await task  # not the reply's timeout: that would be DEADLINE

    run(go())


@pytest.mark.parametrize(("start", "final", "code"), [(b"554 5.5.1 no\r\n", None, 554),
                                                      (b"354 go\r\n", b"552 5.3.4 too big\r\n", 552)])
def test_data_refused_at_the_start_or_the_end(start: bytes, final: bytes | None, code: int) -> None:
    async def content() -> AsyncIterator[bytes]:
        yield b"x\r\n.\r\n"

    async def go() -> bytes:
        protocol, transport = await connected()
        task = asyncio.create_task(protocol.execute_data(content(), reply_timeout=DEADLINE,
                                                         block_timeout=DEADLINE))
        await until(lambda: transport.written.endswith(b"DATA\r\n"))
        protocol.data_received(start)
        if final is not None:
            await until(lambda: transport.written.endswith(b".\r\n"))
            protocol.data_received(final)
        with pytest.raises(SMTPDataError) as info:
            await task
        assert info.value.code == code
        return bytes(transport.written)

    written = run(go())
    assert written.endswith(b"DATA\r\nx\r\n.\r\n") == (final is not None)  # no content after a 554
