"""POP3 reads the maildrops the application gives it (``Services.mailboxes``), whatever their
backend: the session names no concrete store."""

from __future__ import annotations

import poplib
from collections.abc import Generator
from pathlib import Path

from taube.store.mailbox import MailboxMessage
from tests.e2e.inprocess import InProcessServer

PASSWORD = "pop-secret-123"
MESSAGE = b"Subject: from memory\r\n\r\nhello\r\n"


class MemoryMailbox:
    """A maildrop of one message held in memory."""

    def __init__(self) -> None:
        self.messages: list[MailboxMessage] = []
        self.deleted: list[str] = []

    def load(self) -> list[MailboxMessage]:
        self.messages = [MailboxMessage(Path("/nonexistent/1"), "uid-1", len(MESSAGE))]
        return self.messages

    def read(self, message: MailboxMessage) -> Generator[bytes, None, None]:
        yield MESSAGE

    def delete(self, messages: list[MailboxMessage]) -> None:
        self.deleted.extend(m.uid for m in messages)


def test_pop3_uses_the_mailbox_factory_it_is_given(make_server) -> None:
    config = make_server(pop3=True, pop3_toml="plaintext_requires_tls = false")
    config.add_user("alice@example.test", PASSWORD)
    with InProcessServer(config, runner=False) as server:
        assert server.app is not None
        opened: list[str] = []
        mailbox = MemoryMailbox()

        def factory(user: str) -> MemoryMailbox:
            opened.append(user)
            return mailbox

        server.app.services.mailboxes = factory
        client = poplib.POP3("127.0.0.1", server.pop3_port, timeout=10)
        client.user("Alice@example.test")
        client.pass_(PASSWORD)
        assert client.uidl()[1] == [b"1 uid-1"]
        assert b"\r\n".join(client.retr(1)[1]) + b"\r\n" == MESSAGE
        client.dele(1)
        client.quit()
    assert opened == ["alice@example.test"]
    assert mailbox.deleted == ["uid-1"]
