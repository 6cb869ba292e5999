"""The outbound client's message argument: a file read from its position, chunks from an
iterator or an async iterator with their size (RFC 1870 SIZE), never one ``bytes``; a read error
or a peer that stops reading in the middle of DATA ends the attempt."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from taube.delivery.client import OutRecipient, SMTPClientError, TransactionResult
from tests.peer import ScriptedPeer
from tests.unit.test_client import DEADLINE, MESSAGE, connect, failure, peer, run  # noqa: F401 - peer: the fixture


def send_content(peer: ScriptedPeer, message: Any, size: int | None = None,
                 **open_kw: Any) -> TransactionResult:
    async def go() -> TransactionResult:
        conn = await connect(peer, **open_kw)
        try:
            return await conn.send(sender="a@sender.test", recipients=[OutRecipient("b@example.org")],
                                   message=message, size=size)
        finally:
            await conn.close()

    return run(go())


def test_a_file_is_sent_from_its_position_and_sized_from_there(peer: ScriptedPeer) -> None:
    source = io.BytesIO(b"Return-Path: <a@sender.test>\r\n" + MESSAGE)
    source.seek(len(b"Return-Path: <a@sender.test>\r\n"))
    assert send_content(peer, source).replies["b@example.org"].ok
    [tx] = peer.wait_for_transactions(1, DEADLINE)
    assert tx.data == MESSAGE and tx.mail_params["SIZE"] == str(len(MESSAGE))


@pytest.mark.parametrize("kind", ["iterator", "async iterator"])
def test_chunks_with_their_size(peer: ScriptedPeer, kind: str) -> None:
    pieces = [MESSAGE[i:i + 5] for i in range(0, len(MESSAGE), 5)]  # lines and dots cut anywhere

    async def agen() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    chunks = iter(pieces) if kind == "iterator" else agen()
    assert send_content(peer, chunks, size=len(MESSAGE)).replies["b@example.org"].ok
    [tx] = peer.wait_for_transactions(1, DEADLINE)
    assert tx.data == MESSAGE and tx.mail_params["SIZE"] == str(len(MESSAGE))


def test_the_whole_message_as_bytes_or_chunks_without_size_are_refused(peer: ScriptedPeer) -> None:
    with pytest.raises(TypeError):
        send_content(peer, MESSAGE)
    with pytest.raises(ValueError, match="size"):
        send_content(peer, iter([MESSAGE]))
    assert not any(c.startswith("MAIL") for c in peer.commands)


class _FailingFile(io.BytesIO):
    """A message file whose second read fails (an I/O error of the disk)."""

    reads = 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        if self.reads > 1:
            raise OSError(5, "Input/output error")
        return super().read(size)


def test_a_read_error_in_the_middle_of_data_ends_the_attempt(peer: ScriptedPeer) -> None:
    error = failure(peer, lambda conn: conn.send(sender="a@sender.test",
                                                 recipients=[OutRecipient("b@example.org")],
                                                 message=_FailingFile(b"x" * (200 * 1024))))
    assert (error.stage, error.temporary, error.status) == ("data", True, "4.3.0")
    assert "Input/output error" in str(error)
    assert peer.transactions == [] and peer.rejected == []


def test_a_peer_that_stops_reading_stops_the_writes_until_the_block_timeout(peer: ScriptedPeer) -> None:
    peer.stall_data = True
    peer.extensions = ("PIPELINING", "ENHANCEDSTATUSCODES")  # no SIZE limit
    total = 64 * 1024 * 1024
    produced = 0

    def chunks() -> Iterator[bytes]:
        nonlocal produced
        line = b"y" * 78 + b"\r\n"
        while produced < total:
            produced += 64 * 1024
            yield line * (64 * 1024 // len(line)) + b"z" * (64 * 1024 % len(line))

    async def go() -> None:
        conn = await connect(peer, command_timeout=2.0, data_timeout=DEADLINE * 6)
        try:
            await conn.send(sender="a@sender.test", recipients=[OutRecipient("b@example.org")],
                            message=chunks(), size=total)
        finally:
            await conn.close()

    with pytest.raises(SMTPClientError) as info:
        run(go())
    assert (info.value.stage, info.value.temporary) == ("data", True)
    assert "timed out" in str(info.value)
    assert produced < total // 2  # flow control: nothing near the whole message was taken
