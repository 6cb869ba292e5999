"""POP3 reads the maildrops the application gives it (``Services.mailboxes``), whatever their
backend: the session names no concrete store."""

from __future__ import annotations

import poplib

from taube.store.mailbox import MailboxMessage
from tests.e2e.inprocess import InProcessServer

PASSWORD = "pop-secret-123"
MESSAGE = b"Subject: from memory\r\n\r\nhello\r\n"


class MemoryContent:
    """The message, handed out a few octets at a time (the session must read on to the end)."""

    def __init__(self) -> None:
        self.left = MESSAGE
        self.at_end = False
        self.closed = False

    def read(self, size: int) -> bytes:
        data, self.left = self.left[:min(size, 5)], self.left[min(size, 5):]
        self.at_end = not data
        return data

    def close(self) -> None:
        self.closed = True


class MemoryMailbox:
    """A maildrop of one message held in memory."""

    def __init__(self) -> None:
        self.messages: list[MailboxMessage] = []
        self.deleted: list[str] = []
        self.opened: list[MemoryContent] = []
        self.seen_uids: list[str] = []

    def load(self) -> list[MailboxMessage]:
        self.messages = [MailboxMessage("/nonexistent/1", "uid-1", len(MESSAGE))]
        return self.messages

    def open(self, message: MailboxMessage) -> MemoryContent:
        self.opened.append(MemoryContent())
        return self.opened[-1]

    def seen(self, message: MailboxMessage) -> None:
        self.seen_uids.append(message.uid)

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
        assert b"\r\n".join(client.top(1, 0)[1]) + b"\r\n" == MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
        assert b"\r\n".join(client.retr(1)[1]) + b"\r\n" == MESSAGE
        client.dele(1)
        client.quit()
    assert opened == ["alice@example.test"]
    assert mailbox.deleted == ["uid-1"]
    assert mailbox.seen_uids == ["uid-1"]  # by RETR, not by TOP
    assert all(content.closed for content in mailbox.opened) and len(mailbox.opened) == 2
