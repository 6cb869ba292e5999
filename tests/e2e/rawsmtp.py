"""A minimal raw SMTP client for tests that need exact bytes on the wire (pipelining, smuggling)."""

from __future__ import annotations

import re
import socket
import time

FINAL = re.compile(rb"^\d{3} [^\r\n]*\r\n", re.M)


class RawSMTP:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0,
                 source: str | None = None) -> None:
        """``source``: the local address to connect from (e.g. 127.0.0.2, an untrusted client)."""
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.timeout = timeout
        self.buf = b""
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        """One whole reply (all its lines), decoded."""
        deadline = time.monotonic() + self.timeout
        while True:
            m = FINAL.search(self.buf)
            if m:
                end = m.end()
                text, self.buf = self.buf[:end], self.buf[end:]
                return text.decode()
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply; got {self.buf!r}")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; got {self.buf!r}")
            self.buf += chunk

    def replies(self, n: int) -> list[str]:
        return [self.reply() for _ in range(n)]

    def cmd(self, line: str | bytes) -> str:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def closed(self, timeout: float = 10.0) -> bool:
        """True once the server has closed the connection (EOF), within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (TimeoutError, socket.timeout):
            return False
        except ConnectionError:
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawSMTP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
