"""A scripted SMTP server for tests: the "remote MX" that outbound delivery talks to.

It runs an asyncio server in a background thread, so synchronous tests (and a ``taube serve``
subprocess pointed at it) can use it. Its replies come from attributes that may be changed
between (or during) tests; it records what it received::

    with ScriptedPeer(rcpt_reply=lambda rcpt: "550 5.1.1 No such user" if "bad" in rcpt
                      else "250 2.1.5 Ok") as peer:
        ...  # deliver to peer.host:peer.port
        [tx] = peer.wait_for_transactions(1, timeout=10)
        assert tx.recipients == [("good@example.org", {})]

Reply strings may hold several lines separated by ``\\n``, each starting with the code; the
continuation hyphens (RFC 5321 4.2.1) are added here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from taube.net.tls import ensure_self_signed, server_context

__all__ = ["ScriptedPeer", "Transaction"]

MAX_LINE = 4096  # a command line longer than this ends the connection
MAX_DATA = 64 * 1024 * 1024  # message content kept; the rest is read and discarded
READ_CHUNK = 65536
DEFAULT_EXTENSIONS = ("PIPELINING", "SIZE 10485760", "8BITMIME", "ENHANCEDSTATUSCODES", "DSN",
                      "SMTPUTF8")


@dataclass
class Transaction:
    """One mail transaction the peer received. ``mail_params``/recipient parameters map the
    upper-cased keyword to its value ("" for a keyword without a value)."""

    sender: str
    mail_params: dict[str, str]
    recipients: list[tuple[str, dict[str, str]]]
    data: bytes  # dot-unstuffed, CRLF kept, without the final ".CRLF" (b"" unless keep_data)
    size: int  # octets of that content, counted whether kept or not
    sha256: str  # its SHA-256, hex
    tls: bool
    auth_user: str | None
    helo: str
    final_reply: str = ""  # what the peer answered to the end of data


@dataclass
class _Session:
    tls: bool = False
    helo: str = ""
    auth_user: str | None = None
    sender: str | None = None
    mail_params: dict[str, str] = field(default_factory=dict)
    recipients: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def reset(self) -> None:
        self.sender = None
        self.mail_params = {}
        self.recipients = []


class _Closed(Exception):
    """The client went away, or the peer decided to end the connection."""


class _Lines:
    """Our own input buffer over a StreamReader, so that the peer knows what is already
    waiting (commands sent before the previous reply: RFC 2920 pipelining)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.buffer = bytearray()

    async def fill(self) -> None:
        chunk = await self.reader.read(READ_CHUNK)
        if not chunk:
            raise _Closed()
        self.buffer.extend(chunk)

    async def line(self) -> bytes:
        """One line without its line end (LF or CRLF)."""
        while (end := self.buffer.find(b"\n")) < 0:
            if len(self.buffer) > MAX_LINE:
                raise _Closed()
            await self.fill()
        line = bytes(self.buffer[:end])
        del self.buffer[:end + 1]
        return line.removesuffix(b"\r")


def _format(reply: str) -> bytes:
    lines = [line for line in reply.replace("\r\n", "\n").split("\n") if line] or ["250 Ok"]
    out = [f"{line[:3]}-{line[4:]}" for line in lines[:-1]] + [lines[-1]]
    return "".join(f"{line}\r\n" for line in out).encode("utf-8")


def _path_and_params(argument: str, prefix: str) -> tuple[str, dict[str, str]] | None:
    """``FROM:<path> K=V ...`` (RFC 5321 4.1.2 and 4.1.1.2): the path and the parameters."""
    if not argument.upper().startswith(prefix):
        return None
    rest = argument[len(prefix):].lstrip()
    if not rest.startswith("<") or ">" not in rest:
        return None
    end = rest.index(">")
    params: dict[str, str] = {}
    for item in rest[end + 1:].split():
        key, _, value = item.partition("=")
        params[key.upper()] = value
    return rest[1:end], params


class ScriptedPeer:
    """A scripted SMTP server on ``host``:``port`` (0: a free port), run in its own thread."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        greeting: str = "220 peer.test ESMTP",
        extensions: Sequence[str] = DEFAULT_EXTENSIONS,
        ehlo_reply: str | None = None,
        starttls: bool = False,
        mail_reply: str | Callable[[str], str] = "250 2.1.0 Ok",
        rcpt_reply: str | Callable[[str], str] = "250 2.1.5 Ok",
        data_reply: str = "354 End data with <CR><LF>.<CR><LF>",
        final_reply: str | Callable[[Transaction], str] | None = "250 2.0.0 Ok: queued",
        drop_mid_data: bool = False,
        stall_data: bool = False,
        auth: tuple[str, str] | None = None,
        hostname: str = "peer.test",
        keep_data: bool = True,
    ) -> None:
        """``ehlo_reply``: answer EHLO with this instead (e.g. "502 5.5.1 ..." to force HELO).
        ``final_reply`` None: never answer the end of data (a client timeout). ``stall_data``:
        after the 354, read nothing more (the client's writes must stop). ``keep_data``
        False: record only the size and digest of each message, so that a large one costs no
        memory here."""
        self.host = host
        self.port = port
        self.greeting = greeting
        self.extensions = tuple(extensions)
        self.ehlo_reply = ehlo_reply
        self.starttls = starttls
        self.mail_reply = mail_reply
        self.rcpt_reply = rcpt_reply
        self.data_reply = data_reply
        self.final_reply = final_reply
        self.drop_mid_data = drop_mid_data
        self.stall_data = stall_data
        self.auth = auth
        self.hostname = hostname
        self.keep_data = keep_data

        self.transactions: list[Transaction] = []  # accepted (2xx final reply)
        self.rejected: list[Transaction] = []  # content received, final reply not 2xx
        self.connections = 0
        self.commands: list[str] = []  # every command line, in arrival order
        self.pipelined: list[str] = []  # command lines read before the previous one's reply
        self.errors: list[Exception] = []  # unexpected errors while serving (should stay empty)

        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._tls_context: ssl.SSLContext | None = None
        self.cert_path: Path | None = None  # the self-signed certificate (a CA file for clients)

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> ScriptedPeer:
        """Listen, serve in a background thread; returns self."""
        if self._thread is not None:
            return self
        self._tmp = tempfile.TemporaryDirectory(prefix="taube-peer-")
        self.cert_path, key = ensure_self_signed(Path(self._tmp.name), self.hostname)
        self._tls_context = server_context(self.cert_path, key)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="scripted-peer",
                                        daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        except BaseException:
            self.stop()
            raise
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                  limit=READ_CHUNK)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Close the listener and every connection, end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._close_all(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop = self._thread = self._server = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def _close_all(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _ in range(3):  # let the transports' connection_lost callbacks run
            await asyncio.sleep(0)

    def __enter__(self) -> ScriptedPeer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def wait_for_transactions(self, n: int, timeout: float = 10.0) -> list[Transaction]:
        """Block until at least ``n`` transactions were accepted; a copy of the list."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.transactions) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{len(self.transactions)} of {n} transactions after {timeout}s; "
                        f"commands: {self.commands[-20:]}")
                self._changed.wait(left)
            return list(self.transactions)

    def _record(self, tx: Transaction, accepted: bool) -> None:
        with self._changed:
            (self.transactions if accepted else self.rejected).append(tx)
            self._changed.notify_all()

    # -- one connection ----------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            await self._session(_Lines(reader), writer)
        except (_Closed, OSError, asyncio.CancelledError):  # the client went away, or stop()
            pass
        except Exception as exc:  # a bug in a script: keep serving others, keep the evidence
            self.errors.append(exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 5)
            writer.transport.abort()
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _send(self, writer: asyncio.StreamWriter, reply: str) -> None:
        writer.write(_format(reply))
        await writer.drain()

    async def _session(self, lines: _Lines, writer: asyncio.StreamWriter) -> None:
        greeting = self.greeting
        await self._send(writer, greeting)
        if greeting.startswith("421"):
            return
        serving = greeting.startswith("2")  # after a 554 greeting only QUIT (RFC 5321 3.1)
        state = _Session()
        while True:
            raw = await lines.line()
            command = raw.decode("utf-8", "replace")
            self.commands.append(command)
            verb, _, argument = command.partition(" ")
            verb = verb.upper()
            if verb == "QUIT":
                await self._send(writer, "221 2.0.0 Bye")
                return
            if not serving:
                reply = "503 5.5.1 No service"
            else:
                handler = getattr(self, f"_do_{verb.lower()}", None) if verb.isalpha() else None
                if handler is None:
                    reply = "500 5.5.2 Command not recognized"
                else:
                    reply = await handler(argument.strip(), state, lines, writer)
            if reply is None:  # the handler answered already
                continue
            # Anything already buffered was sent before this reply: pipelined (RFC 2920).
            waiting = bool(lines.buffer)
            await self._send(writer, reply)
            if waiting:
                self.pipelined.append(lines.buffer.split(b"\n", 1)[0].decode(
                    "utf-8", "replace").removesuffix("\r"))

    def _ehlo_lines(self, state: _Session) -> str:
        keywords = list(self.extensions)
        if self.starttls and not state.tls:
            keywords.append("STARTTLS")
        if self.auth is not None and state.tls:
            keywords.append("AUTH PLAIN LOGIN")
        return "\n".join([f"250 {self.hostname} greets {state.helo}",
                          *(f"250 {keyword}" for keyword in keywords)])

    async def _do_ehlo(self, argument: str, state: _Session, lines: _Lines,
                       writer: asyncio.StreamWriter) -> str:
        if self.ehlo_reply is not None:
            return self.ehlo_reply
        state.helo = argument
        state.reset()
        return self._ehlo_lines(state)

    async def _do_helo(self, argument: str, state: _Session, lines: _Lines,
                       writer: asyncio.StreamWriter) -> str:
        state.helo = argument
        state.reset()
        return f"250 {self.hostname}"

    async def _do_starttls(self, argument: str, state: _Session, lines: _Lines,
                           writer: asyncio.StreamWriter) -> str | None:
        if not self.starttls or state.tls or self._tls_context is None:
            return "502 5.5.1 STARTTLS not offered"
        lines.buffer.clear()  # RFC 3207 4.2: nothing sent before the handshake counts
        await self._send(writer, "220 2.0.0 Ready to start TLS")
        await writer.start_tls(self._tls_context)
        state.tls = True
        state.helo = ""
        state.auth_user = None
        state.reset()
        return None

    async def _do_auth(self, argument: str, state: _Session, lines: _Lines,
                       writer: asyncio.StreamWriter) -> str | None:
        if self.auth is None or not state.tls:
            return "502 5.5.1 AUTH not offered"
        if state.auth_user is not None:
            return "503 5.5.1 Already authenticated"
        mechanism, _, initial = argument.partition(" ")

        async def ask(challenge: str) -> str:
            await self._send(writer, f"334 {challenge}")
            return (await lines.line()).decode("ascii", "replace").strip()

        try:
            if mechanism.upper() == "PLAIN":
                answer = initial.strip() or await ask("")
                if answer == "*":
                    return "501 5.7.0 Authentication cancelled"
                _, user, password = base64.b64decode(answer, validate=True).decode().split("\0")
            elif mechanism.upper() == "LOGIN":
                answer = initial.strip() or await ask("VXNlcm5hbWU6")
                if answer == "*":
                    return "501 5.7.0 Authentication cancelled"
                user = base64.b64decode(answer, validate=True).decode()
                answer = await ask("UGFzc3dvcmQ6")
                if answer == "*":
                    return "501 5.7.0 Authentication cancelled"
                password = base64.b64decode(answer, validate=True).decode()
            else:
                return "504 5.5.4 Unrecognized authentication type"
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return "501 5.5.2 Cannot decode response"
        if (user, password) != self.auth:
            return "535 5.7.8 Authentication credentials invalid"
        state.auth_user = user
        return "235 2.7.0 Authentication successful"

    async def _do_mail(self, argument: str, state: _Session, lines: _Lines,
                       writer: asyncio.StreamWriter) -> str:
        if not state.helo:
            return "503 5.5.1 Error: send HELO/EHLO first"
        if state.sender is not None:
            return "503 5.5.1 Error: nested MAIL command"
        parsed = _path_and_params(argument, "FROM:")
        if parsed is None:
            return "501 5.5.4 Syntax: MAIL FROM:<address>"
        reply = self.mail_reply(parsed[0]) if callable(self.mail_reply) else self.mail_reply
        if reply.startswith("2"):
            state.sender, state.mail_params = parsed
        return reply

    async def _do_rcpt(self, argument: str, state: _Session, lines: _Lines,
                       writer: asyncio.StreamWriter) -> str:
        if state.sender is None:
            return "503 5.5.1 Error: need MAIL command"
        parsed = _path_and_params(argument, "TO:")
        if parsed is None:
            return "501 5.5.4 Syntax: RCPT TO:<address>"
        reply = self.rcpt_reply(parsed[0]) if callable(self.rcpt_reply) else self.rcpt_reply
        if reply.startswith("2"):
            state.recipients.append(parsed)
        return reply

    async def _do_data(self, argument: str, state: _Session, lines: _Lines,
                       writer: asyncio.StreamWriter) -> str | None:
        if state.sender is None or not state.recipients:
            return "503 5.5.1 Error: need RCPT command"
        reply = self.data_reply
        if not reply.startswith("354"):
            return reply
        await self._send(writer, reply)
        data, size, digest = await self._content(lines)
        tx = Transaction(sender=state.sender, mail_params=dict(state.mail_params),
                         recipients=list(state.recipients), data=data, size=size, sha256=digest,
                         tls=state.tls, auth_user=state.auth_user, helo=state.helo)
        state.reset()
        final = self.final_reply
        if final is None:  # never answer: let the client time out
            return None
        tx.final_reply = final(tx) if callable(final) else final
        self._record(tx, tx.final_reply.startswith("2"))
        return tx.final_reply

    async def _content(self, lines: _Lines) -> tuple[bytes, int, str]:
        """The message content up to CRLF.CRLF, dot-unstuffed (RFC 5321 4.5.2), with its size
        and SHA-256."""
        if self.drop_mid_data:
            if not lines.buffer:
                await lines.fill()
            raise _Closed()
        if self.stall_data:
            await asyncio.Event().wait()  # until stop() cancels this connection
        out = bytearray()
        digest = hashlib.sha256()
        size = 0

        def take(octets: bytes) -> None:
            nonlocal size
            size += len(octets)
            digest.update(octets)
            if self.keep_data and len(out) < MAX_DATA:
                out.extend(octets)

        while True:
            while (end := lines.buffer.find(b"\n")) < 0:
                if len(lines.buffer) > MAX_LINE * 16:  # an overlong line: keep it whole
                    take(bytes(lines.buffer))
                    lines.buffer.clear()
                await lines.fill()
            line = bytes(lines.buffer[:end + 1])
            del lines.buffer[:end + 1]
            if line == b".\r\n":
                return bytes(out), size, digest.hexdigest()
            take(line[1:] if line.startswith(b".") else line)

    async def _do_rset(self, argument: str, state: _Session, lines: _Lines,
                       writer: asyncio.StreamWriter) -> str:
        state.reset()
        return "250 2.0.0 Ok"

    async def _do_noop(self, argument: str, state: _Session, lines: _Lines,
                       writer: asyncio.StreamWriter) -> str:
        return "250 2.0.0 Ok"
