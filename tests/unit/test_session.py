"""How a session ends, the same for SMTP and POP3 (net/session.py): the timeout reply, the
shutdown reply (cancelled by the listener, or idle again while stopping), the resources released,
and a close that cannot hang on a client that stops reading."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from taube.config import POP3Settings, Settings, SMTPSettings
from taube.directory.sqlite import SQLiteDirectory
from taube.net import session as session_module
from taube.net.pop3_session import POP3Session
from taube.net.services import Services
from taube.net.smtp_session import SMTPSession
from taube.policy.local import LocalPolicy, LocalRules
from taube.policy.pipeline import Pipeline
from taube.policy.relay import RelayPolicy
from taube.queue.spool import Spool
from taube.sharedstate import LocalState
from taube.store.maildir import MaildirStore

DEADLINE = 5.0  # seconds any session here gets to end


class FakeIO:
    """A connection whose client sends ``lines`` (one per read) and then stays silent. With
    ``stuck``, the client stops reading: close() alone never completes, only abort() does."""

    def __init__(self, lines: list[bytes] = (), *, stuck: bool = False) -> None:  # type: ignore[assignment]
        self.lines = list(lines)
        self.out = bytearray()
        self.stuck = stuck
        self.reading = asyncio.Event()  # the session waits for input
        self.closed = asyncio.Event()
        self.aborted = False

    async def read(self) -> bytes:
        if self.lines:
            return self.lines.pop(0)
        self.reading.set()
        await asyncio.Future()  # silent until the session gives up or is cancelled
        raise AssertionError("unreachable")

    async def send(self, data: bytes) -> None:
        self.out += data

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        if not self.stuck:
            self.closed.set()

    def abort(self) -> None:
        self.aborted = True
        self.closed.set()

    async def wait_closed(self) -> None:
        await self.closed.wait()

    def extra(self, name: str) -> Any:
        return None


def services_for(tmp_path, settings: Settings) -> Services:
    directory = SQLiteDirectory(tmp_path / "taube.db", settings.domains)
    relay = RelayPolicy(settings.networks())
    state = LocalState()
    return Services(settings=settings, directory=directory, relay=relay,
                    spool=Spool(tmp_path, settings.hostname, MaildirStore(tmp_path / "mail")),
                    state=state, tls=None, mailboxes=lambda user: None,  # type: ignore[arg-type,return-value]
                    pipeline=Pipeline([LocalPolicy(LocalRules.from_settings(settings), directory,
                                                   relay, state)]))


def smtp(tmp_path, io: FakeIO, **smtp_settings: Any) -> SMTPSession:
    settings = Settings(hostname="mx.example.test", data_dir=tmp_path, domains=["example.test"],
                        smtp=SMTPSettings(**smtp_settings))
    return SMTPSession(services_for(tmp_path, settings), io, "127.0.0.1",  # type: ignore[arg-type]
                       smtp=settings.smtp, auth=settings.auth, hostname=settings.hostname)


def pop3(tmp_path, io: FakeIO, **pop3_settings: Any) -> POP3Session:
    settings = Settings(hostname="mx.example.test", data_dir=tmp_path, domains=["example.test"],
                        pop3=POP3Settings(**pop3_settings))
    return POP3Session(services_for(tmp_path, settings), io, "127.0.0.1",  # type: ignore[arg-type]
                       pop3=settings.pop3, auth=settings.auth, hostname=settings.hostname)


async def run_to_end(session: SMTPSession | POP3Session) -> None:
    async with asyncio.timeout(DEADLINE):
        await session.run()


async def shut_down(session: SMTPSession | POP3Session, io: FakeIO) -> None:
    """What the listener does to an idle session: stopping, then cancelled while it waits."""
    task = asyncio.create_task(session.run())
    async with asyncio.timeout(DEADLINE):
        await io.reading.wait()
        assert session.idle
        session.stopping = True
        task.cancel()
        await task  # a stopping session ends quietly


def test_smtp_timeout_says_421_logs_the_state_and_closes(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="taube.smtp")
    io = FakeIO([b"EHLO client.test\r\n"])
    asyncio.run(run_to_end(smtp(tmp_path, io, timeout_command=0.05)))
    assert io.out.endswith(b"421 4.4.2 mx.example.test Error: timeout exceeded, closing transmission channel\r\n")
    assert "timeout client=127.0.0.1 state=greeted" in caplog.text  # where it stalled
    assert io.closed.is_set() and not io.aborted


def test_pop3_autologout_says_err_releases_the_lock_and_closes(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="taube.pop3")
    io = FakeIO()
    session = pop3(tmp_path, io, timeout=0.05)
    state = session.services.state
    assert state.lock_mailbox("alice@example.test")
    session.locked = "alice@example.test"  # as after a login
    asyncio.run(run_to_end(session))
    assert io.out.endswith(b"-ERR autologout timer expired\r\n")
    assert "timeout client=127.0.0.1 state=authorization" in caplog.text
    assert state.lock_mailbox("alice@example.test")  # released
    assert io.closed.is_set() and not io.aborted


def test_shutdown_of_an_idle_smtp_session_says_421(tmp_path) -> None:
    io = FakeIO([b"EHLO client.test\r\n"])
    asyncio.run(shut_down(smtp(tmp_path, io), io))
    assert io.out.endswith(b"421 4.3.2 mx.example.test Service shutting down, closing transmission channel\r\n")
    assert io.closed.is_set()


def test_shutdown_of_an_idle_pop3_session_says_err(tmp_path) -> None:
    io = FakeIO()
    asyncio.run(shut_down(pop3(tmp_path, io), io))
    assert io.out.endswith(b"-ERR server shutting down\r\n")
    assert io.closed.is_set()


def test_a_cancel_without_shutdown_is_not_swallowed(tmp_path) -> None:
    async def cancel() -> None:
        io = FakeIO()
        task = asyncio.create_task(pop3(tmp_path, io).run())
        async with asyncio.timeout(DEADLINE):
            await io.reading.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert io.closed.is_set() and b"-ERR server" not in io.out

    asyncio.run(cancel())


def test_a_session_idle_again_while_stopping_says_goodbye_itself(tmp_path) -> None:
    """A session busy when the shutdown began is not cancelled; once its transaction is over
    it says 421 at its next wait for input instead of waiting for the client."""

    class ShutdownMidway(FakeIO):
        async def read(self) -> bytes:
            if len(self.lines) == 1:
                session.stopping = True  # the shutdown begins while the NOOP is being handled
            return await super().read()

    io = ShutdownMidway([b"EHLO client.test\r\n", b"NOOP\r\n"])
    session = smtp(tmp_path, io)
    asyncio.run(run_to_end(session))
    assert io.out.endswith(b"250 2.0.0 Ok\r\n421 4.3.2 mx.example.test Service shutting down, closing transmission channel\r\n")
    assert not io.reading.is_set()  # it never waited for the client


def test_a_client_that_stops_reading_cannot_hold_the_close(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(session_module, "CLOSE_TIMEOUT", 0.05)
    io = FakeIO(stuck=True)
    asyncio.run(run_to_end(pop3(tmp_path, io, timeout=0.05)))
    assert io.aborted
