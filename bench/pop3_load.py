"""A small asyncio POP3 load generator: mailbox downloads and login cycles over loopback.

Download: each of N connections logs in as its own user (USER/PASS), sends STAT, UIDL, RETR for
every message and QUIT, one command at a time (no pipelining), and never DELE, so the mailbox is
unchanged for the next run. A message counts when its whole RETR answer (up to the final dot)
has arrived and, unstuffed, has the size STAT/LIST promised; anything else is an error.
Login: N connections share a bounded number of cycles of connect, greeting, USER, PASS, QUIT
(each connection with its own user, since POP3 allows one session per mailbox at a time).

Standalone: .venv/bin/python bench/pop3_load.py --port 2110 --users user1@bench.test,...
            --password PW [--test download|login] [--logins 300]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

HOST = "127.0.0.1"
REPLY_TIMEOUT = 30.0
STREAM_LIMIT = 16 * 1024 * 1024  # a UIDL listing of many messages is one read


class Pop3Error(Exception):
    """An unexpected reply or a broken connection; the message is the error's kind."""


@dataclass
class LoadResult:
    done: int = 0          # messages retrieved, or login cycles completed
    octets: int = 0        # message octets retrieved (unstuffed, without the final dot line)
    seconds: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, host: str, port: int) -> Client:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=STREAM_LIMIT), REPLY_TIMEOUT)
        client = cls(reader, writer)
        await client.status("greeting")
        return client

    async def status(self, what: str) -> bytes:
        try:
            line = await asyncio.wait_for(self.reader.readline(), REPLY_TIMEOUT)
        except TimeoutError as exc:
            raise Pop3Error(f"{what}: no reply within {REPLY_TIMEOUT:.0f} s") from exc
        if not line:
            raise Pop3Error(f"{what}: connection closed")
        if not line.startswith(b"+OK"):
            raise Pop3Error(f"{what}: {line[:60].decode(errors='replace').strip()}")
        return line

    async def command(self, text: str, what: str) -> bytes:
        self.writer.write(text.encode() + b"\r\n")
        return await self.status(what)

    async def multiline(self, text: str, what: str) -> bytes:
        """Sends a command with a multi-line answer; returns the body, still dot-stuffed,
        without the terminating ``.\\r\\n`` (ends with CRLF unless empty)."""
        await self.command(text, what)
        try:
            first = await asyncio.wait_for(self.reader.readline(), REPLY_TIMEOUT)
            if first == b".\r\n":
                return b""
            rest = await asyncio.wait_for(self.reader.readuntil(b"\r\n.\r\n"), REPLY_TIMEOUT)
        except TimeoutError as exc:
            raise Pop3Error(f"{what}: body not finished within {REPLY_TIMEOUT:.0f} s") from exc
        except asyncio.IncompleteReadError as exc:
            raise Pop3Error(f"{what}: connection closed in the body") from exc
        return first + rest[:-3]

    async def login(self, user: str, password: str) -> None:
        await self.command(f"USER {user}", "USER")
        await self.command(f"PASS {password}", "PASS")

    async def quit(self) -> None:
        await self.command("QUIT", "QUIT")
        self.close()

    def close(self) -> None:
        self.writer.close()


def unstuffed_size(body: bytes) -> int:
    """Octets of a dot-stuffed body once each leading extra dot is removed."""
    stuffed = body.count(b"\r\n..") + (1 if body.startswith(b"..") else 0)
    return len(body) - stuffed


async def download_one(host: str, port: int, user: str, password: str,
                       result: LoadResult) -> None:
    client = await Client.connect(host, port)
    try:
        await client.login(user, password)
        stat = (await client.command("STAT", "STAT")).split()
        count = int(stat[1])
        listing = await client.multiline("LIST", "LIST")
        sizes = {int(n): int(s) for n, s in (line.split() for line in listing.splitlines())}
        uidl = await client.multiline("UIDL", "UIDL")
        if len(uidl.splitlines()) != count or len(sizes) != count:
            raise Pop3Error("UIDL/LIST count differs from STAT")
        for number in range(1, count + 1):
            body = await client.multiline(f"RETR {number}", "RETR")
            octets = unstuffed_size(body)
            if octets != sizes[number]:
                result.errors[f"RETR size {octets} != LIST size {sizes[number]}"] += 1
                continue
            result.done += 1
            result.octets += octets
        await client.quit()
    finally:
        client.close()


async def login_cycles(host: str, port: int, user: str, password: str, cycles: int,
                       result: LoadResult) -> None:
    for _ in range(cycles):
        try:
            client = await Client.connect(host, port)
            try:
                await client.login(user, password)
                await client.quit()
            finally:
                client.close()
        except (TimeoutError, Pop3Error, OSError) as exc:
            result.errors[error_kind(exc)] += 1
            continue
        result.done += 1


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, Pop3Error):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"[:80]


async def guarded(coro: object, result: LoadResult) -> None:
    try:
        await coro  # type: ignore[misc]
    except (TimeoutError, Pop3Error, OSError, ValueError, IndexError) as exc:
        result.errors[error_kind(exc)] += 1


async def run_download(host: str, port: int, logins: list[tuple[str, str]]) -> LoadResult:
    """One download per login, all at once; timed from the first connect to the last QUIT."""
    result = LoadResult()
    began = time.perf_counter()
    await asyncio.gather(*(guarded(download_one(host, port, user, password, result), result)
                           for user, password in logins))
    result.seconds = time.perf_counter() - began
    return result


async def run_logins(host: str, port: int, logins: list[tuple[str, str]],
                     total: int) -> LoadResult:
    """``total`` login cycles shared among ``len(logins)`` concurrent connections."""
    result = LoadResult()
    shares = [total // len(logins) + (1 if i < total % len(logins) else 0)
              for i in range(len(logins))]
    began = time.perf_counter()
    await asyncio.gather(*(guarded(login_cycles(host, port, user, password, share, result),
                                   result)
                           for (user, password), share in zip(logins, shares) if share))
    result.seconds = time.perf_counter() - began
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--users", required=True, help="comma-separated logins, one per client")
    parser.add_argument("--password", required=True)
    parser.add_argument("--test", choices=("download", "login"), default="download")
    parser.add_argument("--logins", type=int, default=300, help="login cycles in all")
    args = parser.parse_args()
    logins = [(user, args.password) for user in args.users.split(",") if user]
    if args.test == "download":
        result = asyncio.run(run_download(HOST, args.port, logins))
        print(f"{result.done} messages, {result.octets} octets in {result.seconds:.3f} s: "
              f"{result.done / result.seconds:.1f} msgs/s, "
              f"{result.octets / result.seconds / 1e6:.2f} MB/s; errors {dict(result.errors)}")
    else:
        result = asyncio.run(run_logins(HOST, args.port, logins, args.logins))
        print(f"{result.done} logins in {result.seconds:.3f} s: "
              f"{result.done / result.seconds:.1f} logins/s; errors {dict(result.errors)}")


if __name__ == "__main__":
    main()
