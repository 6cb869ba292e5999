"""Drive the sans-I/O engines in tests as a session does: feed bytes whole or one at a time,
answer decisions, collect what the engine sent and every event."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from taube.proto import pop3
from taube.proto.common import NEED_DATA
from taube.proto.replies import Reply
from taube.proto.smtp import (
    AuthLookup,
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


def reads(data: bytes | Iterable[bytes], bytewise: bool = False) -> list[bytes]:
    """``data`` as the reads a session makes: one (or one per item), or one per octet."""
    chunks = [data] if isinstance(data, bytes) else list(data)
    return [bytes([b]) for chunk in chunks for b in chunk] if bytewise else chunks


def run_engine(conn: Any, chunks: Iterable[bytes], handle: Callable[[Any], None], *,
               close: bool = True) -> tuple[bytes, list[Any]]:
    """Run an engine (SMTP or POP3) over ``chunks``, then the peer's close (or, without
    ``close``, stop once they are used up): at NEED_DATA its output is taken and the next read
    given; every event is kept, each but Closed goes to ``handle`` and the output after it is
    taken. Returns the output (from after what the caller took before) and the events."""
    feed = iter([*chunks, b""] if close else chunks)
    out = bytearray()
    events: list[Any] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            out += conn.data_to_send()
            chunk = next(feed, None)
            if chunk is None:
                return bytes(out), events
            conn.receive_data(chunk)
            continue
        events.append(event)
        if isinstance(event, (Closed, pop3.Closed)):
            out += conn.data_to_send()
            return bytes(out), events
        handle(event)
        out += conn.data_to_send()


def session(data: bytes | Iterable[bytes], *, config: SMTPConfig | None = None, answer: Answer = accept_all,
            lookup: Callable[[object], object] | None = None,
            bytewise: bool = False) -> tuple[bytes, list[Event], SMTPConnection]:
    """An SMTP session over ``data`` (see :func:`reads`) after the greeting: each decision gets
    ``answer`` (accept for None or a positive reply, else reject), and with ``lookup`` each
    AuthLookup gets ``lookup(request)``. Returns what the server sent after the greeting, all
    events, and the connection."""
    conn = SMTPConnection(config or SMTPConfig(hostname="mx.test"))
    conn.data_to_send()  # greeting

    def handle(event: Event) -> None:
        if lookup is not None and isinstance(event, AuthLookup):
            conn.auth_resolve(lookup(event.request))
        elif isinstance(event, Decision):
            reply = answer(event)
            if reply is None or reply.is_positive:
                conn.accept(reply)
            else:
                conn.reject(reply)

    out, events = run_engine(conn, reads(data, bytewise), handle)
    return out, events, conn


def drive(data: bytes | Iterable[bytes], *, config: SMTPConfig | None = None,
          answer: Answer = accept_all, bytewise: bool = False) -> tuple[bytes, list[Event]]:
    """Feed ``data`` and return (everything the server sent after the greeting, all events)."""
    out, events, _ = session(data, config=config, answer=answer, bytewise=bytewise)
    return out, events


def refusing(kind: type[Decision], reply: Reply) -> Answer:
    """The default policy, but ``reply`` to every ``kind`` decision."""
    return lambda event: reply if isinstance(event, kind) else accept_all(event)


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
