"""The client side of outbound delivery: one SMTP connection to one next hop (RFC 5321 3.3, 4.1),
reused for several mail transactions.

:class:`OutboundConnection` opens the connection (greeting, EHLO with the HELO fallback of
RFC 5321 3.2, STARTTLS per RFC 3207, AUTH per RFC 4954) and runs transactions with
:meth:`OutboundConnection.send`, which passes on SIZE (RFC 1870), BODY=8BITMIME (RFC 6152),
SMTPUTF8 (RFC 6531) and the DSN parameters (RFC 3461) where the next hop offers them, and
pipelines MAIL and RCPT (RFC 2920) where it offers PIPELINING.

Every reply is a :class:`Reply` with its RFC 3463 enhanced status code. A failure of the whole
attempt (the connection is unusable) is an :class:`SMTPClientError`; a refusal of recipients is
a per-recipient reply in the :class:`TransactionResult`.

aiosmtplib carries the conversation, with a reply reader that keeps the replies to pipelined
commands (:mod:`.protocol`); the message is streamed from its file in bounded chunks
(:mod:`.data`), never read whole into memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from aiosmtplib.errors import (
    SMTPConnectResponseError,
    SMTPDataError,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)
from aiosmtplib.response import SMTPResponse

from ..proto.address import xtext_encode
from ..proto.replies import Reply
from .data import Content, ContentReadError, content_size, wire
from .protocol import QueueingProtocol, QueueingSMTP

__all__ = [
    "OutRecipient",
    "OutboundConnection",
    "SMTPClientError",
    "TransactionResult",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NOTIFY_VALUES = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})  # RFC 3461 4.1
_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")  # RFC 3461 4.2 addr-type (an atom)
_SHUTDOWN_DEADLINE = 5.0  # seconds to wait for the socket to be closed
_QUIT_TIMEOUT = 30.0

Stage = Literal["connect", "greeting", "helo", "starttls", "auth", "mail", "rcpt", "data", "quit"]

_STAGE_PHRASE = {
    "connect": "while connecting",
    "greeting": "while receiving the initial server greeting",
    "helo": "after EHLO",
    "starttls": "after STARTTLS",
    "auth": "after AUTH",
    "mail": "after MAIL FROM",
    "rcpt": "after RCPT TO",
    "data": "after DATA",
    "quit": "after QUIT",
}

_STAGE_STATUS = {  # RFC 3463 3.5: 4.4.2 bad connection, 4.4.1 no answer from host
    "connect": "4.4.1",
    "greeting": "4.4.2",
    "starttls": "4.7.4",  # RFC 3207 4.1 / Postfix: TLS is required, but was not offered
}


@dataclass(frozen=True, slots=True)
class OutRecipient:
    """One recipient of a transaction, with its RFC 3461 4.1/4.2 parameters."""

    address: str
    notify: tuple[str, ...] | None = None  # ("SUCCESS", "FAILURE"), ("NEVER",), ...
    orcpt: str | None = None  # decoded: "rfc822;user@example.org"


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """The outcome of one transaction, per recipient address."""

    replies: dict[str, Reply]  # the refusing RCPT reply, the final reply after DATA, or the
    #                            MAIL refusal (or a synthetic reply when nothing was sent)
    dsn: bool  # the next hop offers DSN (RFC 3461): NOTIFY/ORCPT/RET/ENVID were passed on


class SMTPClientError(Exception):
    """The whole attempt failed and the connection is unusable: connect refused or timed out,
    4xx/5xx greeting, EHLO/HELO refused, STARTTLS required but missing or failed, AUTH failed,
    a 421 reply (RFC 5321 3.8), connection lost or timed out (for example mid-DATA)."""

    def __init__(self, message: str, *, stage: Stage, temporary: bool,
                 reply: Reply | None = None, status: str | None = None) -> None:
        super().__init__(message)
        self.reply = reply
        self.temporary = temporary
        self.stage = stage
        self._status = status

    @property
    def status(self) -> str:
        """An RFC 3463 status for a DSN: the reply's, else one that fits the failure."""
        if self.reply is not None:
            return self.reply.status()
        if self._status:
            return self._status
        return _STAGE_STATUS.get(self.stage, "4.4.2" if self.temporary else "5.4.0")


def _client_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """verify=False: encryption without authentication, as usual between MTAs (RFC 7435,
    opportunistic security); verify=True: the default chain and host name checks."""
    if verify:
        return ssl.create_default_context(cafile=ca_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _refused_all(recipients: Sequence[OutRecipient], reply: Reply) -> dict[str, Reply]:
    return {r.address: reply for r in recipients}


class OutboundConnection:
    """One SMTP connection to one next-hop server, reused for several transactions."""

    remote_mta: str
    tls_active: bool

    def __init__(self, smtp: QueueingSMTP, sock: socket.socket, *, address: str, port: int,
                 server_name: str, command_timeout: float, data_timeout: float) -> None:
        self._smtp = smtp
        self._sock = sock
        self.address = address
        self.port = port
        self.remote_mta = server_name
        self.tls_active = False
        self._label = address if server_name == address else f"{server_name}[{address}]"
        self._command_timeout = command_timeout
        self._data_timeout = data_timeout
        self._extensions: dict[str, str] = {}
        self._dead = False

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    async def open(cls, *, address: str, port: int, server_name: str, helo: str,
                   tls: Literal["none", "may", "encrypt"] = "may", verify: bool = False,
                   ca_file: str | None = None, auth: tuple[str, str] | None = None,
                   connect_timeout: float = 30.0, command_timeout: float = 300.0,
                   data_timeout: float = 600.0) -> OutboundConnection:
        """Connect to ``address``:``port`` and get the session ready for MAIL: greeting
        (RFC 5321 3.1), EHLO or HELO (3.2), STARTTLS (RFC 3207) and AUTH (RFC 4954)."""
        label = address if server_name == address else f"{server_name}[{address}]"
        sock = await cls._connect(address, port, label, connect_timeout)
        try:
            smtp = QueueingSMTP(local_hostname=helo, timeout=command_timeout, start_tls=False,
                         use_tls=False, sock=sock)
        except ValueError as exc:
            sock.close()
            raise SMTPClientError(f"bad HELO name {helo!r}: {exc}", stage="helo",
                                  temporary=True) from exc
        conn = cls(smtp, sock, address=address, port=port, server_name=server_name,
                   command_timeout=command_timeout, data_timeout=data_timeout)
        try:
            await conn._greet()
            await conn._hello(helo)
            if tls != "none":
                await conn._starttls(tls, verify, ca_file, helo)
            if auth is not None:
                await conn._authenticate(auth)
        except BaseException:
            await conn._shutdown()
            raise
        return conn

    @staticmethod
    async def _connect(address: str, port: int, label: str, timeout: float) -> socket.socket:
        loop = asyncio.get_running_loop()
        where = f"connect to {label}:{port}"
        sock: socket.socket | None = None
        try:
            async with asyncio.timeout(timeout):
                infos = await loop.getaddrinfo(address, port, type=socket.SOCK_STREAM)
                family, kind, proto, _, sockaddr = infos[0]
                sock = socket.socket(family, kind, proto)
                sock.setblocking(False)
                await loop.sock_connect(sock, sockaddr)
        except TimeoutError as exc:
            if sock is not None:
                sock.close()
            raise SMTPClientError(f"{where}: Connection timed out", stage="connect",
                                  temporary=True) from exc
        except OSError as exc:
            if sock is not None:
                sock.close()
            reason = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
            raise SMTPClientError(f"{where}: {reason}", stage="connect",
                                  temporary=True) from exc
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        return sock

    async def _greet(self) -> None:
        try:
            await self._smtp.connect(timeout=self._command_timeout)
        except SMTPConnectResponseError as exc:
            reply = Reply.parse(exc.code, exc.message)
            raise self._refusal("greeting", reply, "the initial server greeting") from exc
        except (SMTPServerDisconnected, SMTPTimeoutError, OSError, ValueError) as exc:
            raise self._lost("greeting", exc) from exc

    async def _hello(self, helo: str) -> None:
        """EHLO, and HELO when EHLO is refused with 5xx (RFC 5321 3.2)."""
        name = helo.encode("ascii", "replace")
        reply, response = await self._command("helo", b"EHLO", name)
        if reply.ok:
            self._smtp.last_ehlo_response = response
            self._extensions = dict(self._smtp.esmtp_extensions)
            return
        if reply.temporary:
            raise self._refusal("helo", reply, "EHLO")
        reply, response = await self._command("helo", b"HELO", name)
        if not reply.ok:
            raise self._refusal("helo", reply, "HELO")
        self._smtp.last_helo_response = response
        self._extensions = {}

    async def _starttls(self, tls: str, verify: bool, ca_file: str | None, helo: str) -> None:
        """RFC 3207: STARTTLS when offered, then EHLO again (the extensions may differ)."""
        if not self.supports("STARTTLS"):
            if tls == "encrypt":
                raise SMTPClientError(f"TLS is required, but was not offered by host {self._label}",
                                      stage="starttls", temporary=True, status="4.7.4")
            return
        try:
            context = _client_context(verify, ca_file)
            await self._smtp.starttls(server_hostname=self.remote_mta, tls_context=context,
                                      timeout=self._command_timeout)
        except SMTPResponseException as exc:
            reply = Reply.parse(exc.code, exc.message)
            if reply.code == 421 or tls == "encrypt":
                raise self._refusal("starttls", reply, "STARTTLS", temporary=True) from exc
            return  # "may": STARTTLS refused, the session goes on in the clear
        except (SMTPServerDisconnected, SMTPTimeoutError, ssl.SSLError, OSError,
                ValueError) as exc:
            detail = str(exc.__cause__ or exc) or type(exc).__name__
            raise SMTPClientError(f"TLS handshake with {self._label} failed: {detail}",
                                  stage="starttls", temporary=True, status="4.7.5") from exc
        self.tls_active = True
        self._extensions = {}
        await self._hello(helo)

    async def _authenticate(self, credentials: tuple[str, str]) -> None:
        """RFC 4954 AUTH, PLAIN (RFC 4616) or else LOGIN, and only over TLS."""
        user, password = credentials
        if not self.tls_active:
            raise SMTPClientError(f"will not send credentials to {self._label} without TLS",
                                  stage="auth", temporary=True, status="4.7.10")
        methods = self._smtp.server_auth_methods
        if "plain" in methods:
            method = self._smtp.auth_plain
        elif "login" in methods:
            method = self._smtp.auth_login
        else:
            raise SMTPClientError(f"host {self._label} offers no AUTH PLAIN or LOGIN",
                                  stage="auth", temporary=True, status="4.7.10")
        try:
            await method(user, password, timeout=self._command_timeout)
        except SMTPResponseException as exc:
            reply = Reply.parse(exc.code, exc.message)
            raise self._refusal("auth", reply, "AUTH") from exc
        except (SMTPServerDisconnected, SMTPTimeoutError, OSError, ValueError) as exc:
            raise self._lost("auth", exc) from exc

    # -- state -------------------------------------------------------------------------------

    def supports(self, extension: str) -> bool:
        """The next hop announced ``extension`` in its last EHLO reply (RFC 5321 4.1.1.1)."""
        return extension.lower() in self._extensions

    @property
    def usable(self) -> bool:
        """The connection can carry another transaction."""
        return not self._dead and self._smtp.is_connected

    def _size_limit(self) -> int | None:
        """RFC 1870 4: the fixed maximum message size, or None (no limit announced)."""
        value = self._extensions.get("size", "").strip()
        return int(value) if value.isdigit() and int(value) > 0 else None

    # -- errors ------------------------------------------------------------------------------

    def _lost(self, stage: Stage, exc: BaseException) -> SMTPClientError:
        self._dead = True
        phrase = _STAGE_PHRASE[stage]
        if isinstance(exc, (TimeoutError, SMTPTimeoutError)):
            text = f"conversation with {self._label} timed out {phrase}"
        elif isinstance(exc, SMTPResponseException):  # a malformed or overlong reply
            text = f"bad reply from {self._label} {phrase}: {exc.message}"
        else:
            text = f"lost connection with {self._label} {phrase}"
        return SMTPClientError(text, stage=stage, temporary=True)

    def _refusal(self, stage: Stage, reply: Reply, command: str,
                 temporary: bool | None = None) -> SMTPClientError:
        self._dead = True
        if temporary is None:
            temporary = not 500 <= reply.code < 600
        text = f"host {self._label} said: {reply} (in reply to {command})"
        return SMTPClientError(text, stage=stage, temporary=temporary, reply=reply)

    async def _command(self, stage: Stage, *args: bytes,
                       timeout: float | None = None) -> tuple[Reply, SMTPResponse]:
        """One command and its reply; a lost connection or a 421 raises (RFC 5321 3.8)."""
        try:
            response = await self._smtp.execute_command(
                *args, timeout=self._command_timeout if timeout is None else timeout)
        except (SMTPServerDisconnected, SMTPTimeoutError, SMTPResponseException, OSError,
                ValueError) as exc:
            raise self._lost(stage, exc) from exc
        reply = Reply.parse(response.code, response.message)
        if reply.code == 421:
            raise self._refusal(stage, reply, args[0].decode("ascii", "replace"))
        return reply, response

    async def _shutdown(self) -> None:
        """Close the transport and wait (bounded) until the socket is closed."""
        self._dead = True
        tcp = self._smtp.tcp_transport
        if isinstance(tcp, asyncio.WriteTransport) and tcp.get_write_buffer_size():
            tcp.abort()  # content the peer stopped reading: a close would wait to flush it
        self._smtp.close()
        if tcp is None:  # the socket never got a transport
            self._sock.close()
            return
        if not tcp.is_closing():
            tcp.close()
        deadline = time.monotonic() + _SHUTDOWN_DEADLINE
        while self._sock.fileno() != -1:
            if time.monotonic() > deadline:  # e.g. a TLS close_notify that never comes
                tcp.abort()
                await asyncio.sleep(0)
                break
            await asyncio.sleep(0.001)

    # -- transactions ------------------------------------------------------------------------

    def _mail_command(self, sender: str, size: int, params: Mapping[str, str],
                      smtputf8: bool, dsn: bool) -> bytes:
        parts = [f"MAIL FROM:<{sender}>"]
        if self.supports("SIZE"):
            parts.append(f"SIZE={size}")  # RFC 1870 6
        if params.get("BODY", "").upper() == "8BITMIME" and self.supports("8BITMIME"):
            parts.append("BODY=8BITMIME")  # RFC 6152 2
        if smtputf8:
            parts.append("SMTPUTF8")  # RFC 6531 3.4
        if dsn:
            ret = params.get("RET", "").upper()
            if ret in ("FULL", "HDRS"):
                parts.append(f"RET={ret}")  # RFC 3461 4.3
            if params.get("ENVID"):
                parts.append(f"ENVID={xtext_encode(params['ENVID'])}")  # RFC 3461 4.4
        return " ".join(parts).encode("utf-8")

    @staticmethod
    def _rcpt_command(recipient: OutRecipient, dsn: bool) -> bytes:
        parts = [f"RCPT TO:<{recipient.address}>"]
        if dsn:
            notify = [v.upper() for v in recipient.notify or () if v.upper() in _NOTIFY_VALUES]
            if notify:
                parts.append("NOTIFY=" + ",".join(notify))  # RFC 3461 4.1
            if recipient.orcpt:
                kind, sep, original = recipient.orcpt.partition(";")
                if not sep:
                    kind, original = "rfc822", recipient.orcpt
                if _ADDR_TYPE.fullmatch(kind) and original:
                    parts.append(f"ORCPT={kind};{xtext_encode(original)}")  # RFC 3461 4.2
        return " ".join(parts).encode("utf-8")

    async def send(self, *, sender: str, recipients: Sequence[OutRecipient], message: Content,
                   size: int | None = None, params: Mapping[str, str] = {}) -> TransactionResult:
        """One mail transaction (RFC 5321 3.3): MAIL, RCPT for each recipient (pipelined when
        the next hop offers PIPELINING, RFC 2920), and DATA when a recipient was accepted.

        ``message`` is the content with CRLF line ends: a binary file positioned at its start
        (the queue file opened at the body offset), or its chunks (an iterator or an async
        iterator of bytes) with ``size`` given. It is read, dot-stuffed and written in bounded
        chunks (:mod:`.data`). ``size`` (default: the file's octets from its position on) is
        what SIZE announces (RFC 1870)."""
        size = content_size(message, size)
        dsn = self.supports("DSN")
        if self._dead or not self._smtp.is_connected:
            self._dead = True
            raise SMTPClientError(f"connection with {self._label} is closed", stage="mail",
                                  temporary=True)
        if not recipients:
            return TransactionResult({}, dsn)

        # Checks that need no round trip.
        addresses = [sender, *(r.address for r in recipients)]
        if _CONTROL.search(sender):
            return TransactionResult(_refused_all(recipients, Reply(
                code=501, enhanced="5.1.7", text="Bad sender address syntax")), dsn)
        refused: dict[str, Reply] = {}
        for r in recipients:
            if _CONTROL.search(r.address) or not r.address:
                refused[r.address] = Reply(code=501, enhanced="5.1.3", text="Bad recipient address syntax")
        needs_utf8 = not all(a.isascii() for a in addresses)
        if (needs_utf8 or "SMTPUTF8" in params) and not self.supports("SMTPUTF8"):
            if needs_utf8:  # RFC 6531 3.2: the mail cannot be passed on
                return TransactionResult(_refused_all(recipients, Reply(
                    code=550, enhanced="5.6.7",
                    text=f"SMTPUTF8 is required, but was not offered by host {self._label}")), dsn)
        smtputf8 = self.supports("SMTPUTF8") and (needs_utf8 or "SMTPUTF8" in params)
        limit = self._size_limit()
        if limit is not None and size > limit:  # RFC 1870 6
            return TransactionResult(_refused_all(recipients, Reply(
                code=552, enhanced="5.3.4",
                text=f"message size {size} exceeds size limit {limit} of server "
                     f"{self._label}")), dsn)
        to_send = [r for r in recipients if r.address not in refused]
        if not to_send:
            return TransactionResult(refused, dsn)

        try:
            return await self._transaction(sender, to_send, refused, message, size, params,
                                           smtputf8, dsn)
        except BaseException:  # SMTPClientError, or cancelled: the session state is unknown
            await self._shutdown()
            raise

    async def _transaction(self, sender: str, recipients: Sequence[OutRecipient],
                           replies: dict[str, Reply], message: Content, size: int,
                           params: Mapping[str, str], smtputf8: bool,
                           dsn: bool) -> TransactionResult:
        mail = self._mail_command(sender, size, params, smtputf8, dsn)
        rcpts = [self._rcpt_command(r, dsn) for r in recipients]

        if self.supports("PIPELINING"):
            answers = await self._pipelined([mail, *rcpts])
            mail_reply, rcpt_replies = answers[0], answers[1:]
        else:
            mail_reply, _ = await self._command("mail", mail)
            rcpt_replies = []
            if mail_reply.ok:
                for command in rcpts:
                    rcpt_replies.append((await self._command("rcpt", command))[0])

        if not mail_reply.ok:
            replies.update(_refused_all(recipients, mail_reply))
            await self._reset()
            return TransactionResult(replies, dsn)

        accepted: list[OutRecipient] = []
        for recipient, reply in zip(recipients, rcpt_replies):
            if reply.ok:
                accepted.append(recipient)
            else:
                replies[recipient.address] = reply
        if not accepted:
            await self._reset()
            return TransactionResult(replies, dsn)

        final = await self._data(message)
        replies.update(_refused_all(accepted, final))
        if not final.ok:
            await self._reset()
        return TransactionResult(replies, dsn)

    async def _pipelined(self, commands: list[bytes]) -> list[Reply]:
        """MAIL and every RCPT in one write, the replies read in order (RFC 2920 3.1)."""
        protocol = self._smtp.protocol
        if not isinstance(protocol, QueueingProtocol):
            raise self._lost("mail", SMTPServerDisconnected("Server not connected"))
        responses: list[SMTPResponse] = []
        try:
            await protocol.execute_pipelined(commands, self._command_timeout, responses)
        except (SMTPServerDisconnected, SMTPTimeoutError, SMTPResponseException, OSError,
                ValueError) as exc:
            raise self._lost("rcpt" if responses else "mail", exc) from exc
        replies = [Reply.parse(r.code, r.message) for r in responses]
        for index, reply in enumerate(replies):
            if reply.code == 421:
                raise self._refusal("mail" if index == 0 else "rcpt", reply,
                                    "MAIL FROM" if index == 0 else "RCPT TO")
        return replies

    async def _data(self, message: Content) -> Reply:
        """DATA, the content streamed in wire form and the final reply (RFC 5321 4.1.1.4):
        each reply awaited for ``data_timeout`` (4.5.3.2.6), each chunk of content given
        ``command_timeout`` to be sent (4.5.3.2.5)."""
        protocol = self._smtp.protocol
        if not isinstance(protocol, QueueingProtocol):
            raise self._lost("data", SMTPServerDisconnected("Server not connected"))
        try:
            async with contextlib.aclosing(wire(message)) as content:
                response = await protocol.execute_data(content, reply_timeout=self._data_timeout,
                                                       block_timeout=self._command_timeout)
        except ContentReadError as exc:
            self._dead = True  # the data is cut short: the session cannot go on
            raise SMTPClientError(str(exc), stage="data", temporary=True, status="4.3.0") from exc
        except SMTPDataError as exc:  # 4xx/5xx to DATA itself or to the end of data
            reply = Reply.parse(exc.code, exc.message)
            if reply.code == 421:
                raise self._refusal("data", reply, "DATA") from exc
            return reply
        except (SMTPServerDisconnected, SMTPTimeoutError, SMTPResponseException, OSError,
                ValueError) as exc:
            raise self._lost("data", exc) from exc
        return Reply.parse(response.code, response.message)

    async def _reset(self) -> None:
        """RSET after a failed transaction (RFC 5321 4.1.1.5); a failure here only ends the
        connection, the transaction's outcome stands."""
        try:
            reply, _ = await self._command("mail", b"RSET")
        except SMTPClientError:
            await self._shutdown()
            return
        if not reply.ok:
            await self._shutdown()

    # -- closing -----------------------------------------------------------------------------

    async def close(self) -> None:
        """QUIT if possible (RFC 5321 4.1.1.10), then close; never raises."""
        try:
            if not self._dead and self._smtp.is_connected:
                try:
                    await self._smtp.execute_command(
                        b"QUIT", timeout=min(self._command_timeout, _QUIT_TIMEOUT))
                except Exception:
                    pass
        finally:
            try:
                await self._shutdown()
            except Exception:
                pass
