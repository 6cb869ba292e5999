"""Benchmark peer: aiosmtpd with a handler that stores each message durably in one Maildir.

Each accepted message is written to ``tmp/``, the file is fsynced, hard-linked into ``new/``,
``new/`` is fsynced, and only then is ``250`` sent. The blocking file work runs in a thread
pool so that concurrent messages can share the filesystem's journal commits, as a
production server would do.

Usage: aiosmtpd_maildir.py --port PORT --maildir DIR [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import itertools
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope

HOSTNAME = "aiosmtpd.bench.test"
IO_THREADS = 64


class Maildir:
    """One Maildir folder; ``deliver`` is blocking and returns only once the file is durable."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.new = root / "new"
        for folder in (self.tmp, self.new, root / "cur"):
            folder.mkdir(parents=True, exist_ok=True)
        self._counter = itertools.count()
        self._host = socket.gethostname().replace("/", "_").replace(":", "_")

    def _unique_name(self) -> str:
        return f"{time.time_ns()}.P{os.getpid()}Q{next(self._counter)}.{self._host}"

    def deliver(self, data: bytes) -> str:
        name = self._unique_name()
        tmp_path = self.tmp / name
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp_path, self.new / name)
        os.unlink(tmp_path)
        fsync_directory(self.new)
        return name


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MaildirHandler:
    """aiosmtpd handler: advertises PIPELINING and stores every message in one Maildir."""

    def __init__(self, maildir: Maildir) -> None:
        self.maildir = maildir

    async def handle_EHLO(self, server: SMTP, client: Any, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        # aiosmtpd reads commands one line at a time, so pipelined commands are handled in order.
        # ``client`` is aiosmtpd's per-connection state (host name, peer address).
        client.host_name = hostname
        return responses[:-1] + ["250-PIPELINING", responses[-1]]

    async def handle_DATA(self, server: SMTP, client: Any, envelope: Envelope) -> str:
        # The same trace headers that a real MTA prepends.
        peer_ip = client.peer[0] if isinstance(client.peer, tuple) else "unknown"
        header = (f"Return-Path: <{envelope.mail_from}>\r\n"
                  f"Received: from {client.host_name} ([{peer_ip}])\r\n"
                  f"\tby {HOSTNAME} with ESMTP; {email.utils.formatdate()}\r\n").encode()
        data = header + (envelope.original_content or b"")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.maildir.deliver, data)
        except OSError as exc:
            return f"451 4.3.0 cannot store message: {exc.strerror}"
        return "250 2.0.0 OK stored"


async def serve(host: str, port: int, maildir: Maildir) -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(IO_THREADS, thread_name_prefix="maildir-io"))
    handler = MaildirHandler(maildir)
    server = await loop.create_server(
        lambda: SMTP(handler, hostname=HOSTNAME, loop=loop), host=host, port=port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--maildir", type=Path, required=True)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    asyncio.run(serve(args.host, args.port, Maildir(args.maildir)))


if __name__ == "__main__":
    main()
