"""Drive the sans-I/O SMTP engine in tests: feed bytes whole or one at a time, answer decisions."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from taube.proto.replies import Reply
from taube.proto.smtp import (
    NEED_DATA,
    Closed,
    DataChunk,
    Decision,
    EndOfData,
    Event,
    SMTPConfig,
    SMTPConnection,
    Vrfy,
    Expn,
)

Answer = Callable[[Decision], Reply | None]
QUEUED = Reply(code=250, enhanced="2.0.0", text="Ok: queued as TEST")


def accept_all(event: Decision) -> Reply | None:
    """Default policy: yes to everything, 'queued' at the end of data."""
    if isinstance(event, EndOfData):
        return QUEUED
    if isinstance(event, (Vrfy, Expn)):
        return Reply(code=252, enhanced="2.0.0", text="maybe")
    return None


def drive(data: bytes | Iterable[bytes], *, config: SMTPConfig | None = None,
          answer: Answer = accept_all, bytewise: bool = False) -> tuple[bytes, list[Event]]:
    """Feed ``data`` and return (everything the server sent after the greeting, all events)."""
    conn = SMTPConnection(config or SMTPConfig(hostname="mx.test"))
    conn.data_to_send()  # greeting
    chunks: list[bytes] = [data] if isinstance(data, bytes) else list(data)
    if bytewise:
        chunks = [bytes([b]) for chunk in chunks for b in chunk]
    out = bytearray()
    events: list[Event] = []
    feed = iter(chunks)
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            out += conn.data_to_send()
            chunk = next(feed, None)
            conn.receive_data(chunk if chunk is not None else b"")
            continue
        events.append(event)
        if isinstance(event, Closed):
            out += conn.data_to_send()
            return bytes(out), events
        if isinstance(event, Decision):
            reply = answer(event)
            if reply is None or reply.is_positive:
                conn.accept(reply)
            else:
                conn.reject(reply)


def codes(out: bytes) -> list[str]:
    """The final reply lines' ``code enhanced`` prefixes, e.g. ['250', '250 2.1.0']."""
    result = []
    for line in out.decode().split("\r\n"):
        if len(line) >= 4 and line[3] == " ":
            parts = line.split(" ")
            result.append(" ".join(parts[:2]) if len(parts) > 1 and parts[1][:1].isdigit() and "." in parts[1] else parts[0])
    return result


def content(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataChunk))
