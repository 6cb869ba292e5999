"""The content of DATA, streamed: a message is read in bounded chunks, put in wire form chunk by
chunk, and never held whole in memory, however large it is and however many are sent at once.

Wire form (RFC 5321 4.5.2 and 2.3.8): every line end is CRLF (a bare CR or LF becomes one, as
aiosmtplib and Python's smtplib do it), a line starting with ``.`` gets another ``.``, and the
content ends with CRLF ``.`` CRLF (4.1.1.4). Both rules look across chunk boundaries: a CR at
the end of one chunk may be the first half of a CRLF, and a line may start at the beginning of
the next chunk.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import BinaryIO, TypeAlias

from ..proto.dotstuff import ContentEncoder

__all__ = ["CHUNK", "Content", "ContentReadError", "DataEncoder", "content_size", "wire"]

# Octets read (and written, before stuffing) at a time: asyncio's default write-buffer
# high-water mark, so that one chunk fills the transport's buffer and the next waits for it.
CHUNK = 64 * 1024

# A message to send: a binary file positioned at its start (the queue file opened at the body
# offset), or its chunks from an iterator or an async iterator.
Content: TypeAlias = BinaryIO | Iterable[bytes] | AsyncIterable[bytes]


class ContentReadError(Exception):
    """The message could not be read (an I/O error on the queue file), in the middle of DATA."""


class DataEncoder:
    """Message content to the wire form of DATA, incrementally: :meth:`encode` each chunk,
    then :meth:`finish` for the end of data. The output is the same however the content is
    split into chunks."""

    __slots__ = ("_cr", "_stuffing")

    def __init__(self) -> None:
        self._stuffing = ContentEncoder(body_lines=None)  # dot-stuffing and the final dot
        self._cr = False  # the last chunk ended in a CR held back: the next one says if CRLF

    def encode(self, chunk: bytes) -> bytes:
        if self._cr:
            chunk = b"\r" + chunk
        self._cr = chunk.endswith(b"\r")
        if self._cr:
            chunk = chunk[:-1]
        return self._stuffing.encode(_crlf(chunk))

    def finish(self) -> bytes:
        """The end of data: a CR held back ends the last line, then CRLF ``.`` CRLF."""
        last = self._stuffing.encode(b"\r\n") if self._cr else b""
        self._cr = False
        return last + self._stuffing.finish()


def _crlf(data: bytes) -> bytes:
    """Every bare CR and bare LF as CRLF (``data`` does not end in a CR)."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def content_size(content: Content, size: int | None = None) -> int:
    """The message size as SIZE announces it (RFC 1870 5: the octets with their CRLFs, not the
    stuffing dots nor the final dot): ``size`` when given, else what the file holds from its
    position on. The whole message as one ``bytes`` is refused: it is what streaming avoids."""
    if isinstance(content, (bytes, bytearray, memoryview, str)):
        raise TypeError("the message is a binary file or an iterator of chunks, not one bytes")
    if size is not None:
        return size
    if not isinstance(content, io.IOBase):
        raise ValueError("the size of a message given as chunks must be passed as size=")
    start = content.tell()
    end = content.seek(0, io.SEEK_END)
    content.seek(start)
    return end - start


async def wire(content: Content) -> AsyncIterator[bytes]:
    """The DATA wire form of ``content``, in chunks of about :data:`CHUNK` octets (stuffing
    adds a little), the last one ending with CRLF ``.`` CRLF."""
    encoder = DataEncoder()
    async for chunk in _chunks(content):
        out = encoder.encode(chunk)
        if out:
            yield out
    yield encoder.finish()


async def _chunks(content: Content) -> AsyncIterator[bytes]:
    """``content`` in chunks of at most :data:`CHUNK` octets; a file is read in a worker
    thread (a slow disk must not stall the event loop)."""
    if isinstance(content, io.IOBase):
        loop = asyncio.get_running_loop()
        while True:
            try:
                chunk = await loop.run_in_executor(None, content.read, CHUNK)
            except OSError as e:
                raise ContentReadError(f"cannot read the message: {e}") from e
            if not chunk:
                return
            yield chunk
    elif isinstance(content, AsyncIterable):
        async for piece in content:
            for part in _bounded(piece):
                yield part
    else:
        for piece in content:
            for part in _bounded(piece):
                yield part


def _bounded(piece: bytes) -> Iterator[bytes]:
    """``piece`` cut into parts of at most :data:`CHUNK` octets."""
    return (piece[start:start + CHUNK] for start in range(0, len(piece), CHUNK))
