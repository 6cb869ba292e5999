"""No loss when storage fails, over real SMTP and POP3 sessions: a small real filesystem filled
up, the free-space reserve at MAIL FROM, every durable write point failing in turn (short writes,
ENOSPC, EDQUOT, EIO), and POP3 deletions that are committed all together or not at all.

After each step the whole data directory is walked: every message in a Maildir or in the queue
is complete and byte-identical to one that got ``250``, every ``250`` is stored, nothing is left
in ``tmp/`` or staged in the queue, and every queue envelope parses.
"""

from __future__ import annotations

import logging
import os
import poplib
import re
import smtplib
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from taube.queue.spool import QueueEntry
from tests.e2e.conftest import TaubeServer, wait_for
from tests.e2e.inprocess import InProcessServer
from tests.faults import FAULTS, FaultyCalls, faults  # noqa: F401 - the fixture

SENDER = "lb@trash.test"
PASSWORD = "pop-secret-123"
LOCAL = ["alice@example.test"]
MIXED = ["alice@example.test", "bob@example.test", "far@remote.test"]
REMOTE = ["far@remote.test"]
_QUEUE_ID = re.compile(r"Q([0-9A-Za-z]+)\.")


@dataclass(frozen=True)
class Sent:
    """A message that got 250: what was sent and where it must be."""

    queue_id: str
    content: bytes
    recipients: tuple[str, ...]

    @property
    def local(self) -> set[str]:
        return {r for r in self.recipients if r.endswith("@example.test")}

    @property
    def remote(self) -> set[str]:
        return set(self.recipients) - self.local


def make_message(n: int, size: int) -> bytes:
    """A message of about ``size`` octets, CRLF line ends, every line numbered (a torn or
    shuffled copy cannot match)."""
    head = (f"From: <{SENDER}>\r\nTo: <alice@example.test>\r\nSubject: message {n}\r\n"
            f"Message-ID: <{n}.{size}@trash.test>\r\n\r\n").encode()
    lines = [f"{n:05d}.{i:07d} {'abcdefghijklmnopqrstuvwxyz0123456789' * 2}\r\n".encode()
             for i in range(max(1, (size - len(head)) // 88))]
    return head + b"".join(lines)


def transaction(port: int, recipients: list[str], content: bytes,
                size: int | None = None) -> tuple[int, str]:
    """One transaction on a connection of its own (the engine's error limits and tarpit are
    per connection). The reply to MAIL if it was refused, else the reply to the final dot."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        code, reply = client.mail(SENDER, [f"SIZE={size}"] if size is not None else [])
        if code != 250:
            return code, reply.decode()
        for rcpt in recipients:
            assert client.rcpt(rcpt)[0] == 250
        code, reply = client.data(content)
        if code != 250:
            assert client.noop()[0] == 250  # the session goes on
        return code, reply.decode()


def send(port: int, recipients: list[str], content: bytes, sent: dict[str, Sent]) -> tuple[int, str]:
    code, reply = transaction(port, recipients, content)
    if code == 250:
        queue_id = reply.split()[-1]
        sent[queue_id] = Sent(queue_id, content, tuple(recipients))
    return code, reply


def check_copy(data: bytes, sent: Sent, where: Path) -> None:
    """A stored copy is the Return-Path line, taube's Received header, then exactly what the
    client sent."""
    assert data.endswith(sent.content), f"torn or altered: {where} ({len(data)} octets)"
    head = data[: len(data) - len(sent.content)]
    assert head.startswith(f"Return-Path: <{SENDER}>\r\nReceived: ".encode()), where
    assert sent.queue_id.encode() in head and b"\r\n\r\n" not in head, where


def check_store(data_dir: Path, sent: dict[str, Sent]) -> None:
    """The invariants of the issue, over every file under ``data_dir``."""
    copies: dict[str, set[str]] = {}
    for path in sorted((data_dir / "mail").glob("*/*/*/*")):
        assert path.parent.name in ("new", "cur"), f"left behind in {path.parent.name}/: {path}"
        match = _QUEUE_ID.search(path.name)
        assert match and match.group(1) in sent, f"a message that never got 250: {path}"
        data = path.read_bytes()
        check_copy(data, sent[match.group(1)], path)
        assert path.name.split(":")[0].endswith(f",S={len(data)}"), path
        copies.setdefault(match.group(1), set()).add(f"{path.parent.parent.name}@{path.parent.parent.parent.name}")
    for queue_id, message in sent.items():
        assert copies.get(queue_id, set()) == message.local, f"{queue_id}: 250 but not stored"
    envelopes = sorted((data_dir / "queue" / "envelopes").iterdir())
    assert all(p.name.endswith(".json") for p in envelopes), f"staged envelope left: {envelopes}"
    queued = {p.name[: -len(".json")]: QueueEntry.from_json(p.read_bytes()) for p in envelopes}
    data_files = {p.name: p for p in (data_dir / "queue" / "messages").iterdir()}
    assert set(data_files) == set(queued), "queue data without envelope, or envelope without data"
    assert set(queued) == {q for q, m in sent.items() if m.remote}
    for queue_id, entry in queued.items():
        assert {r.address for r in entry.recipients} == sent[queue_id].remote
        check_copy(data_files[queue_id].read_bytes(), sent[queue_id], data_files[queue_id])


# -- a small real filesystem ---------------------------------------------------------------------

@pytest.fixture
def small_fs() -> Iterator[Callable[[str], Path]]:
    """``small_fs("4m")``: a tmpfs of that size (needs root, else the test is skipped)."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("needs root to mount a small tmpfs")
        path = Path(tempfile.mkdtemp(prefix=f"taube-fs-{uuid.uuid4().hex[:6]}-"))
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                                capture_output=True)
        if result.returncode != 0:
            path.rmdir()
            pytest.skip(f"cannot mount a tmpfs: {result.stderr.decode().strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)
        path.rmdir()


def server_on(make_server, fs: Path, smtp_toml: str = "", **kwargs: object) -> TaubeServer:
    server = make_server(smtp_toml=smtp_toml, **kwargs)
    data_dir = fs / "var"
    server.config.write_text(server.config.read_text().replace('data_dir = "var"', f'data_dir = "{data_dir}"'))
    server.data_dir = data_dir
    server.add_user("alice@example.test", PASSWORD)
    server.add_user("bob@example.test", PASSWORD)
    return server


def test_a_full_filesystem_never_gets_250_without_the_whole_message(make_server, small_fs) -> None:
    """1 KiB, 100 KiB, 1 MiB and 3 MiB messages, to one local user and to two local users and a
    remote one, into a 4 MiB filesystem until it is full (no reserve: real ENOSPC)."""
    server = server_on(make_server, small_fs("4m"), smtp_toml="min_free_space = 0").start()
    sent: dict[str, Sent] = {}
    refused = []
    n = 0
    for _ in range(4):
        for size in (1024, 100 * 1024, 1024 * 1024, 3 * 1024 * 1024):
            n += 1
            recipients = LOCAL if n % 2 else MIXED
            code, reply = send(server.port, recipients, make_message(n, size), sent)
            if code != 250:
                assert (code, reply.split()[0]) == (452, "4.3.1"), reply
                refused.append(size)
    assert len(sent) >= 4 and len(refused) >= 4, (len(sent), refused)
    assert 3 * 1024 * 1024 in refused and any(size < 3 * 1024 * 1024 for size in refused)
    assert server.stop() == 0  # nothing writes while the tree is walked
    check_store(server.data_dir, sent)
    listing = server.cli("queue", "list").stdout  # the queue is still readable by its tools
    assert all(q in listing for q, m in sent.items() if m.remote)
    # Space comes back (the users fetched their mail, the queue was cleared): accepted again.
    for path in (server.data_dir / "mail").glob("*/*/*/*"):
        path.unlink()
    server.cli("queue", "delete", "--all")
    server.start()
    after: dict[str, Sent] = {}
    code, reply = send(server.port, MIXED, make_message(n + 1, 3 * 1024 * 1024), after)
    assert code == 250, reply
    assert server.stop() == 0
    check_store(server.data_dir, after)


def test_min_free_space_refuses_mail_until_space_returns(make_server, small_fs) -> None:
    fs = small_fs("16m")
    reserve = 8 * 1024 * 1024
    server = server_on(make_server, fs, smtp_toml=f"min_free_space = {reserve}").start()
    content = make_message(1, 2048)
    assert transaction(server.port, LOCAL, content)[0] == 250
    # RFC 1870: a declared size beyond the space above the reserve is refused at MAIL.
    st = os.statvfs(fs)
    above = st.f_bavail * st.f_frsize - reserve
    code, reply = transaction(server.port, LOCAL, content, size=above + 1024 * 1024)
    assert (code, reply) == (452, "4.3.1 Insufficient system storage")
    assert transaction(server.port, LOCAL, content, size=len(content))[0] == 250
    # Below the reserve every MAIL is refused ...
    ballast = fs / "ballast"
    ballast.write_bytes(b"\0" * (above + 1024 * 1024))
    wait_for(lambda: transaction(server.port, LOCAL, content) == (452, "4.3.1 Insufficient system storage"),
             timeout=10, what="MAIL refused below the reserve")
    # ... until space returns: no restart needed.
    ballast.unlink()
    wait_for(lambda: transaction(server.port, LOCAL, content)[0] == 250, timeout=10,
             what="mail accepted again")
    assert server.stop() == 0


# -- every write point failing in turn (in-process server, the durable seam) -------------------

def expected_reply(fault: str, operation: str) -> tuple[int, str]:
    if fault == "short" or (fault == "zero" and operation != "write"):
        return 250, "2.0.0"  # not errors: a short write is completed, the others do not apply
    if fault in ("enospc", "edquot"):
        return 452, "4.3.1"
    return 451, "4.3.0"


@pytest.mark.parametrize("recipients,size", [(LOCAL, 2000), (MIXED, 300_000), (REMOTE, 2000)],
                         ids=["local", "mixed-spilled", "remote"])
def test_each_write_point_failing_in_an_smtp_session(make_server, faults: FaultyCalls,
                                                     recipients: list[str], size: int) -> None:
    config = make_server(smtp_toml="min_free_space = 0")
    config.add_user("alice@example.test")
    config.add_user("bob@example.test")
    sent: dict[str, Sent] = {}
    with InProcessServer(config, runner=False) as server:
        n = 0
        for _ in range(2):  # Maildirs and queue directories made: the steady state
            n += 1
            assert send(server.port, recipients, make_message(n, size), sent)[0] == 250
        faults.arm()
        n += 1
        assert send(server.port, recipients, make_message(n, size), sent)[0] == 250
        points = list(faults.points)
        faults.disarm()
        assert {op for op, _ in points} >= {"create", "write", "fsync"}
        for index, (operation, _) in enumerate(points):
            for fault in FAULTS:
                n += 1
                faults.arm(index, fault)
                code, reply = send(server.port, recipients, make_message(n, size), sent)
                faults.disarm()
                assert (code, reply.split()[0]) == expected_reply(fault, operation), \
                    (index, points[index], fault, reply)
                check_store(server.data_dir, sent)
        # and with the storage sound again, the next message is accepted
        assert send(server.port, recipients, make_message(n + 1, size), sent)[0] == 250
    check_store(config.data_dir, sent)


def test_a_storage_error_after_data_is_451_with_one_log_line(make_server, faults: FaultyCalls,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    config = make_server()
    config.add_user("alice@example.test")
    with InProcessServer(config, runner=False) as server, caplog.at_level(logging.INFO, logger="taube"):
        faults.arm(fault="eio", where="/mail/")
        code, reply = transaction(server.port, LOCAL, make_message(1, 2000))
        faults.disarm()
    assert (code, reply.split()[0]) == (451, "4.3.0")
    [line] = [r for r in caplog.records if "storage" in r.getMessage() and r.name == "taube.smtp"]
    assert "result=deferred (storage error: " in line.getMessage()
    assert "Input/output error" in line.getMessage()
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a storage error"


# -- POP3: deletions at QUIT all or nothing ------------------------------------------------------

def pop_login(server: InProcessServer) -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", server.pop3_port, timeout=10)
    client.user("alice@example.test")
    client.pass_(PASSWORD)
    return client


def test_pop3_quit_deletes_every_message_or_none(make_server, faults: FaultyCalls) -> None:
    config = make_server(pop3=True, pop3_toml="plaintext_requires_tls = false")
    config.add_user("alice@example.test", PASSWORD)
    with InProcessServer(config, runner=False) as server:
        maildir = server.maildir("alice@example.test")

        def deliver_three(round_: int) -> list[bytes]:
            sent: dict[str, Sent] = {}
            for i in range(3):
                assert send(server.port, LOCAL, make_message(100 * round_ + i, 1500), sent)[0] == 250
            return [m.content for m in sent.values()]

        def quit_deleting_all() -> None:
            client = pop_login(server)
            try:
                assert client.stat()[0] == 3
                client.retr(1)  # one of them moved to cur/ meanwhile, the others still in new/
                for number in (1, 2, 3):
                    client.dele(number)
                client.quit()
            finally:
                client.close()

        deliver_three(0)
        faults.arm()
        quit_deleting_all()
        points = list(faults.points)
        faults.disarm()
        assert [op for op, _ in points][:3] == ["rename"] * 3 and points[-1][0] == "unlink"
        commit = max(i for i, (op, _) in enumerate(points) if op != "unlink")  # the last fsync
        for index in range(len(points)):
            contents = deliver_three(index + 1)
            faults.arm(index, "eio")
            if index <= commit:
                with pytest.raises(poplib.error_proto, match="-ERR"):
                    quit_deleting_all()
                faults.disarm()
                client = pop_login(server)  # the maildrop as it was
                assert client.stat()[0] == 3
                retrieved = [b"\r\n".join(client.retr(number)[1]) + b"\r\n" for number in (1, 2, 3)]
                assert all(any(r.endswith(c) for r in retrieved) for c in contents)
                client.quit()
                quit_deleting_all()  # with the storage sound, it works
            else:
                quit_deleting_all()  # committed: an unlink failing afterwards changes nothing
                faults.disarm()
            client = pop_login(server)
            assert client.stat()[0] == 0
            client.quit()
            assert list((maildir / "new").iterdir()) == [] and list((maildir / "cur").iterdir()) == []
            for leftover in (maildir / "tmp").iterdir():  # an unlink that failed: invisible
                assert leftover.name.startswith("deleted.")
                leftover.unlink()
