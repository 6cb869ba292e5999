"""DATA content in wire form, chunk by chunk (RFC 5321 4.5.2 dot-stuffing, 2.3.8 CRLF only,
4.1.1.4 end of data): the same bytes however the message is cut into chunks, checked against
aiosmtplib's whole-message encoding."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator, Iterable

import pytest
from aiosmtplib.protocol import normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from taube.delivery.data import CHUNK, DataEncoder, content_size, wire

# Dots, CRs and LFs next to each other are where stuffing and line ends go wrong.
TRICKY = st.binary(max_size=200) | st.lists(
    st.sampled_from([b".", b"\r", b"\n", b"\r\n", b".\r\n", b"x", b"..", b"\r\n.\r\n"]),
    max_size=60).map(b"".join)


def whole(message: bytes) -> bytes:
    """The reference: aiosmtplib's DATA encoding of the whole message at once (line ends made
    CRLF, a final CRLF, every line-initial dot doubled), then the end of data."""
    return re.sub(rb"(?m)^\.", b"..", normalize_message_line_endings(message)) + b".\r\n"


def chunked(chunks: Iterable[bytes]) -> bytes:
    encoder = DataEncoder()
    return b"".join(encoder.encode(chunk) for chunk in chunks) + encoder.finish()


def cut(message: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({0, len(message), *(c % (len(message) + 1) for c in cuts)})
    return [message[a:b] for a, b in zip(points, points[1:])]


@given(message=TRICKY.filter(bool), cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_any_chunking_encodes_as_the_whole_message(message: bytes, cuts: list[int]) -> None:
    assert chunked(cut(message, cuts)) == whole(message)


@given(message=TRICKY.filter(bool))
def test_one_octet_chunks_encode_as_the_whole_message(message: bytes) -> None:
    assert chunked(message[i:i + 1] for i in range(len(message))) == whole(message)


MESSAGE = b"Subject: x\r\n\r\n.one\r\n..two\r\n.\r\nbare\rcr\nlf\r\n.\r\nend"


@pytest.mark.parametrize("at", range(len(MESSAGE) + 1))
def test_every_single_boundary(at: int) -> None:
    """Each place a chunk boundary can fall, a dot line and a CRLF split among them."""
    expected = (b"Subject: x\r\n\r\n..one\r\n...two\r\n..\r\nbare\r\ncr\r\nlf\r\n..\r\nend\r\n"
                b".\r\n")
    assert whole(MESSAGE) == expected
    assert chunked([MESSAGE[:at], MESSAGE[at:]]) == expected


@pytest.mark.parametrize(("chunks", "wire_form"), [
    ([b"a\r", b"\nb\r\n"], b"a\r\nb\r\n.\r\n"),  # a CRLF split: one line end, not two
    ([b"a\r", b".b\r\n"], b"a\r\n..b\r\n.\r\n"),  # a bare CR ends a line: the dot is stuffed
    ([b"a\r\n", b".b\r\n"], b"a\r\n..b\r\n.\r\n"),  # a line starting in the next chunk
    ([b"a\r", b"", b"\n"], b"a\r\n.\r\n"),  # an empty chunk between the halves
    ([b"last line\r"], b"last line\r\n.\r\n"),  # a CR at the very end
    ([b"no line end"], b"no line end\r\n.\r\n"),
    ([b"."], b"..\r\n.\r\n"),
])
def test_examples(chunks: list[bytes], wire_form: bytes) -> None:
    assert chunked(chunks) == wire_form


def test_empty_message_is_only_the_end_of_data() -> None:
    assert chunked([]) == chunked([b""]) == b".\r\n"


async def collect(content: object) -> list[bytes]:
    return [chunk async for chunk in wire(content)]  # type: ignore[arg-type]


def test_a_file_is_read_in_bounded_chunks_across_which_stuffing_holds() -> None:
    # A CRLF split by the first read, a dot line starting the second, a bare CR ending the third.
    body = b"x" * (CHUNK - 1) + b"\r\n" + b".dot\r\n" + b"y" * (CHUNK - 8) + b"\r" + b"z\r\n"
    source = io.BytesIO(b"Return-Path: <a@b.test>\r\n" + body)
    source.seek(len(b"Return-Path: <a@b.test>\r\n"))
    assert content_size(source) == len(body) and source.tell() == 25  # from the position on
    chunks = asyncio.run(collect(source))
    assert b"".join(chunks) == whole(body)
    assert len(chunks) == 4 and max(map(len, chunks)) <= CHUNK + 1


def test_iterators_are_cut_into_bounded_chunks() -> None:
    big = (b"." + b"a" * 99 + b"\r\n") * 2000  # 200 KiB in one piece, every line stuffed

    async def pieces() -> AsyncIterator[bytes]:
        yield big[:7]
        yield big[7:]

    for content in ([big], iter([big[:7], big[7:]]), pieces()):
        chunks = asyncio.run(collect(content))
        assert b"".join(chunks) == whole(big)
        assert max(map(len, chunks)) <= 2 * CHUNK  # a stuffed chunk of at most CHUNK octets


def test_content_size() -> None:
    assert content_size([b"abc"], size=3) == 3
    with pytest.raises(ValueError, match="size"):
        content_size([b"abc"])
    with pytest.raises(TypeError):
        content_size(b"the whole message")  # type: ignore[arg-type]
