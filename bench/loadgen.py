"""Asyncio SMTP load generator.

N concurrent connections; each sends its share of the messages in sequence over one connection:
EHLO once, then MAIL FROM, RCPT TO and DATA per message, written together when the server
advertises PIPELINING (one command at a time otherwise). A message counts as accepted only when
the ``250`` after the final dot arrives; every other outcome is recorded as an error. With
``auth`` each connection logs in once after EHLO with AUTH PLAIN (RFC 4954, RFC 4616), as a
submission client does.

Usage: loadgen.py --port PORT [--messages 1000] [--concurrency 50] [--size 1024]
                  [--auth USER:PASSWORD]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field

SENDER = "from@bench.test"
RECIPIENT = "user@bench.test"
CLIENT_NAME = "loadgen.bench.test"
MESSAGE_ID_DIGITS = 12


class SMTPReplyError(Exception):
    """The server answered with an unexpected reply code."""

    def __init__(self, stage: str, reply: bytes) -> None:
        super().__init__(f"{stage}: {reply[:120]!r}")
        self.stage = stage
        self.reply = reply


@dataclass
class LoadResult:
    messages: int
    concurrency: int
    accepted: int = 0
    seconds: float = 0.0
    pipelined_connections: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def build_message(size: int) -> tuple[bytes, int]:
    """A dot-stuffing-free message of exactly ``size`` bytes (headers, body, final CRLF).

    Returns the message and the offset of a fixed-width Message-ID field to make each copy unique.
    """
    head = (f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: benchmark\r\n"
            "Message-ID: <").encode()
    tail = b"@loadgen.bench.test>\r\n\r\n"
    fixed = len(head) + MESSAGE_ID_DIGITS + len(tail)
    body_size = max(size - fixed, 2)
    line = b"x" * 76 + b"\r\n"
    body = (line * (body_size // len(line) + 1))[:body_size - 2] + b"\r\n"
    message = head + b"0" * MESSAGE_ID_DIGITS + tail + body
    return message, len(head)


def stamp(template: bytes, offset: int, number: int) -> bytes:
    digits = str(number).zfill(MESSAGE_ID_DIGITS).encode()
    return template[:offset] + digits + template[offset + MESSAGE_ID_DIGITS:]


def split_evenly(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class SMTPConnection:
    """One client connection; every read is bounded by ``timeout`` seconds."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.pipelining = False

    @classmethod
    async def open(cls, host: str, port: int, timeout: float) -> SMTPConnection:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        return cls(reader, writer, timeout)

    async def read_reply(self) -> list[bytes]:
        lines: list[bytes] = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), self.timeout)
            if not line:
                raise ConnectionError("connection closed by server")
            lines.append(line.rstrip(b"\r\n"))
            if line[3:4] != b"-":
                return lines

    async def expect(self, stage: str, code: bytes) -> None:
        reply = await self.read_reply()
        if not reply[-1].startswith(code):
            raise SMTPReplyError(stage, reply[-1])

    async def greet(self) -> None:
        await self.expect("greeting", b"220")
        self.writer.write(f"EHLO {CLIENT_NAME}\r\n".encode())
        reply = await self.read_reply()
        if not reply[-1].startswith(b"250"):
            raise SMTPReplyError("EHLO", reply[-1])
        self.pipelining = any(line[4:].upper().startswith(b"PIPELINING") for line in reply)

    async def login(self, user: str, password: str) -> None:
        """AUTH PLAIN with the initial response (RFC 4954 4, RFC 4616 2)."""
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.writer.write(f"AUTH PLAIN {token}\r\n".encode())
        await self.expect("AUTH", b"235")

    async def send_envelope(self) -> None:
        commands = [(f"MAIL FROM:<{SENDER}>\r\n".encode(), "MAIL", b"250"),
                    (f"RCPT TO:<{RECIPIENT}>\r\n".encode(), "RCPT", b"250"),
                    (b"DATA\r\n", "DATA", b"354")]
        if self.pipelining:
            self.writer.write(b"".join(command for command, _, _ in commands))
            failures: list[SMTPReplyError] = []
            for _, stage, code in commands:
                try:
                    await self.expect(stage, code)
                except SMTPReplyError as exc:
                    failures.append(exc)
            if failures and failures[-1].stage != "DATA":
                await self.abort_data()
            if failures:
                raise failures[0]
            return
        for command, stage, code in commands:
            self.writer.write(command)
            await self.expect(stage, code)

    async def abort_data(self) -> None:
        """DATA was accepted although an earlier pipelined command failed: end it empty."""
        self.writer.write(b".\r\n")
        await self.read_reply()

    async def send_message(self, message: bytes) -> None:
        await self.send_envelope()
        self.writer.write(message + b".\r\n")
        await self.expect("end of data", b"250")

    async def reset(self) -> None:
        self.writer.write(b"RSET\r\n")
        await self.expect("RSET", b"250")

    async def quit(self) -> None:
        try:
            self.writer.write(b"QUIT\r\n")
            await self.read_reply()
        except (OSError, ConnectionError, asyncio.TimeoutError):
            pass
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


async def run_client(host: str, port: int, count: int, first_id: int, template: tuple[bytes, int],
                     result: LoadResult, timeout: float,
                     auth: tuple[str, str] | None = None) -> None:
    """Sends ``count`` messages over one connection; a lost connection forfeits the rest."""
    sent = 0
    try:
        conn = await SMTPConnection.open(host, port, timeout)
        await conn.greet()
        if auth is not None:
            await conn.login(*auth)
        result.pipelined_connections += conn.pipelining
        for number in range(first_id, first_id + count):
            sent += 1
            try:
                await conn.send_message(stamp(*template, number))
                result.accepted += 1
            except SMTPReplyError as exc:
                result.errors[f"{exc.stage}: {exc.reply[:3].decode(errors='replace')}"] += 1
                await conn.reset()
        await conn.quit()
    except (OSError, ConnectionError, asyncio.TimeoutError, SMTPReplyError) as exc:
        result.errors[f"connection: {type(exc).__name__}"] += 1
        result.errors["messages not sent"] += count - sent


async def run_load(host: str, port: int, messages: int, concurrency: int, size: int = 1024,
                   timeout: float = 30.0, auth: tuple[str, str] | None = None) -> LoadResult:
    """Runs the whole load and returns its result; ``seconds`` spans first connect to last reply."""
    result = LoadResult(messages=messages, concurrency=concurrency)
    template = build_message(size)
    shares = split_evenly(messages, concurrency)
    starts = [0, *itertools.accumulate(shares)][:-1]
    began = time.perf_counter()
    await asyncio.gather(*(run_client(host, port, share, start, template, result, timeout, auth)
                           for share, start in zip(shares, starts) if share))
    result.seconds = time.perf_counter() - began
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Asyncio SMTP load generator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--auth", help="USER:PASSWORD for AUTH PLAIN after EHLO")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    result = asyncio.run(run_load(args.host, args.port, args.messages, args.concurrency,
                                  args.size, auth=auth))  # type: ignore[arg-type]
    print(f"{result.accepted}/{result.messages} accepted in {result.seconds:.3f} s "
          f"= {result.rate:.1f} msgs/s (concurrency {result.concurrency}, "
          f"PIPELINING used on {result.pipelined_connections} connections)")
    for error, count in sorted(result.errors.items()):
        print(f"  error {error}: {count}")


if __name__ == "__main__":
    main()
