"""The queue runner's bookkeeping of attempts, with a controlled clock: the backoff schedule,
expiry after the queue lifetime, delay warnings, and who gets which report."""

from __future__ import annotations

import asyncio
import email
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taube.config import Settings
from taube.delivery.dns import Resolver
from taube.delivery.lock import RunnerLock, lock_path
from taube.delivery.reports import NOTICE_PARAM, Reporter
from taube.delivery.outcome import Outcome
from taube.delivery.runner import LOCK_POLL, QueueRunner
from taube.directory.sqlite import SQLiteDirectory
from taube.queue.envelope import Envelope, Target
from taube.queue.spool import Spool
from taube.store.maildir import MaildirStore
from tests.faults import FaultyCalls, faults  # noqa: F401 - the fixture

HOUR = 3600.0
DAY = 24 * HOUR


class World:
    """One data directory with a directory of users, a spool and a runner on a fake clock."""

    def __init__(self, root: Path, **queue: object) -> None:
        self.now = 1_800_000_000.0
        self.settings = Settings.model_validate({
            "hostname": "mail.a.test", "data_dir": str(root), "domains": ["a.test"],
            "queue": queue,
        })
        self.directory = SQLiteDirectory(root / "taube.db", ["a.test"])
        self.directory.add_user("alice@a.test", "pw-alice-123")
        self.directory.add_user("postmaster@a.test", "pw-postmaster-123")
        self.spool = Spool(root, "mail.a.test", MaildirStore(root / "mail"))
        self.reporter = Reporter(self.spool, self.directory, self.settings)
        self.runner = QueueRunner(settings=self.settings, store=self.spool.queue,
                                  reporter=self.reporter, resolver=Resolver(["127.0.0.1:9"]),
                                  clock=lambda: self.now)
        self.root = root

    def queue(self, sender: str = "alice@a.test", recipients: tuple[str, ...] = ("bob@b.test",),
              notify: tuple[str, ...] | None = None, params: dict[str, str] | None = None) -> str:
        queue_id = self.spool.new_queue_id()
        targets = tuple(Target(kind="remote", address=r, original=r, notify=notify) for r in recipients)
        body = b"Subject: hello\r\nMessage-ID: <1@a.test>\r\n\r\nbody\r\n"
        spool_file = self.spool.open(queue_id, sender, targets)
        spool_file.write(body)
        spool_file.commit(Envelope(queue_id=queue_id, sender=sender, targets=targets,
                                   client_address="127.0.0.1", helo="client", received_at=self.now,
                                   size=len(body), params=params or {}))
        return queue_id

    def attempt(self, queue_id: str, kind: str = "deferred", status: str = "4.4.1",
                text: str = "connect to b.test: Connection refused", address: str = "bob@b.test") -> None:
        outcome = Outcome(kind=kind, status=status, text=text, diagnostic=None,  # type: ignore[arg-type]
                           remote_mta=None, relay="none")
        self.runner.bookkeeper.apply(queue_id, {address: outcome}, False)

    def recipient(self, queue_id: str, address: str = "bob@b.test"):
        return next(r for r in self.spool.queue.load(queue_id).recipients if r.address == address)

    def inbox(self, address: str) -> list[email.message.Message]:
        local, domain = address.split("@")
        new = self.root / "mail" / domain / local / "new"
        return [email.message_from_bytes(p.read_bytes()) for p in sorted(new.glob("*"))] if new.exists() else []


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.directory.close()


def test_backoff_schedule_doubles_then_stays_hourly(world: World) -> None:
    queue_id = world.queue()
    waits = []
    for _ in range(7):
        world.attempt(queue_id)
        r = world.recipient(queue_id)
        waits.append(r.next_attempt - world.now)
        world.now = r.next_attempt
    assert waits == [300, 600, 1200, 2400, 3600, 3600, 3600]
    r = world.recipient(queue_id)
    assert r.status == "deferred" and r.attempts == 7 and "refused" in r.last_error


def test_expired_after_lifetime_bounces_once_and_leaves_the_queue(world: World) -> None:
    queue_id = world.queue()
    world.attempt(queue_id)
    assert world.recipient(queue_id).status == "deferred"
    # The last retry is not scheduled past the lifetime.
    world.now += 5 * DAY - 60
    world.attempt(queue_id)
    assert world.recipient(queue_id).next_attempt <= world.spool.queue.load(queue_id).received_at + 5 * DAY
    world.now += 60
    world.attempt(queue_id)
    with pytest.raises(FileNotFoundError):
        world.spool.queue.load(queue_id)
    reports = [m for m in world.inbox("alice@a.test") if "Undelivered" in m["Subject"]]
    assert len(reports) == 1
    status = reports[0].get_payload()[1].get_payload()[1]
    assert status["Action"] == "failed" and status["Status"] == "4.4.1"


def test_delay_warning_once_after_four_hours(world: World) -> None:
    queue_id = world.queue()
    world.attempt(queue_id)
    world.now += 3 * HOUR
    world.attempt(queue_id)
    assert world.inbox("alice@a.test") == []
    world.now += 1 * HOUR
    world.attempt(queue_id)
    world.now += 1 * HOUR
    world.attempt(queue_id)
    [warning] = world.inbox("alice@a.test")
    assert warning["Subject"].startswith("Delayed Mail")
    assert warning.get_payload()[1].get_payload()[1]["Action"] == "delayed"
    assert world.recipient(queue_id).delay_warned is True


def test_notify_failure_only_gets_no_delay_warning(world: World) -> None:
    queue_id = world.queue(notify=("FAILURE",))
    world.now += 5 * HOUR
    world.attempt(queue_id)
    assert world.inbox("alice@a.test") == []


def test_permanent_failure_bounces_at_once(world: World) -> None:
    queue_id = world.queue(recipients=("bob@b.test", "carol@b.test"))
    world.attempt(queue_id, kind="bounced", status="5.1.1", text="550 5.1.1 no such user")
    assert world.recipient(queue_id).status == "bounced"
    assert world.recipient(queue_id, "carol@b.test").status == "queued"
    [bounce] = world.inbox("alice@a.test")
    assert bounce["From"] == "Mail Delivery System <MAILER-DAEMON@mail.a.test>"
    world.attempt(queue_id, kind="sent", status="2.0.0", text="250 ok", address="carol@b.test")
    with pytest.raises(FileNotFoundError):
        world.spool.queue.load(queue_id)
    assert len(world.inbox("alice@a.test")) == 1


def test_null_sender_failure_goes_to_postmaster_once(world: World) -> None:
    queue_id = world.queue(sender="")
    world.attempt(queue_id, kind="bounced", status="5.1.1", text="550 5.1.1 no such user")
    [notice] = world.inbox("postmaster@a.test")
    assert notice["To"] == "<postmaster@a.test>"
    # That notice, were it to fail in turn, is only logged: no report about a report's report.
    notice_id = world.queue(sender="", params={NOTICE_PARAM: "postmaster"})
    world.attempt(notice_id, kind="bounced", status="5.1.1", text="550 5.1.1 no such user")
    assert len(world.inbox("postmaster@a.test")) == 1


def test_deleted_during_delivery_is_not_recreated(world: World) -> None:
    queue_id = world.queue()
    world.spool.queue.remove(queue_id)
    world.attempt(queue_id)
    assert not world.spool.queue.envelope_path(queue_id).exists()


def test_scan_skips_damaged_envelopes_and_reads_changed_ones(world: World) -> None:
    queue_id = world.queue()
    (world.spool.queue.envelopes / "0damaged.json").write_text("{not json")
    first = world.spool.queue.list()
    assert [e.queue_id for e in first] == [queue_id]
    world.attempt(queue_id)
    second = world.spool.queue.list()
    assert second[0].recipients[0].attempts == 1
    assert world.spool.queue.list()[0] is second[0]  # unchanged file: not parsed again


def test_flush_makes_recipients_due_by_domain(world: World) -> None:
    queue_id = world.queue(recipients=("bob@b.test", "eve@sub.c.test"))
    world.attempt(queue_id)
    world.attempt(queue_id, address="eve@sub.c.test")
    assert world.runner.flush("nothing.test") == 0
    assert world.runner.flush("c.test") == 0
    assert world.runner.flush("c.test", subdomains=True) == 1
    assert world.runner._forced == {queue_id: {"eve@sub.c.test"}}
    assert world.runner.flush(None) == 1
    assert world.runner._forced == {queue_id: {"eve@sub.c.test", "bob@b.test"}}
    assert world.runner.retry(queue_id) and world.runner._forced == {queue_id: None}
    assert not world.runner.retry("0nosuchid")



# -- reports that cannot be stored (a full disk or quota) ------------------------------------------

def outcome(kind: str, status: str, text: str) -> Outcome:
    return Outcome(kind=kind, status=status, text=text, diagnostic=None,  # type: ignore[arg-type]
                    remote_mta="mx.b.test", relay="mx.b.test[192.0.2.1]:25")


BOUNCED = outcome("bounced", "5.1.1", "550 5.1.1 no such user")
SENT = outcome("sent", "2.0.0", "250 2.0.0 Ok")


def test_a_bounce_that_cannot_be_stored_keeps_its_recipient_queued(world: World, faults: FaultyCalls) -> None:
    queue_id = world.queue(recipients=("bob@b.test", "carol@b.test"))
    faults.arm(fault="enospc", where="/mail/")  # the sender's Maildir cannot take the report
    world.runner.bookkeeper.apply(queue_id, {"bob@b.test": BOUNCED, "carol@b.test": SENT}, False)
    faults.disarm()
    bob, carol = world.recipient(queue_id), world.recipient(queue_id, "carol@b.test")
    assert bob.status == "deferred" and bob.attempts == 1 and bob.next_attempt == world.now + 300
    assert "550 5.1.1" in bob.last_error
    assert carol.status == "delivered"  # not to be sent again
    assert world.spool.queue.load(queue_id).waiting_for(None) == {"bob@b.test"}
    assert world.inbox("alice@a.test") == [] and list(world.root.glob("mail/*/*/tmp/*")) == []
    # Space is back: the next attempt fails again and its bounce is stored this time.
    world.now = bob.next_attempt
    world.attempt(queue_id, kind="bounced", status="5.1.1", text="550 5.1.1 no such user")
    [bounce] = world.inbox("alice@a.test")
    blocks = bounce.get_payload()[1].get_payload()
    assert [b["Final-Recipient"] for b in blocks[1:]] == ["rfc822; bob@b.test"]
    with pytest.raises(FileNotFoundError):
        world.spool.queue.load(queue_id)


def test_a_bounce_to_a_remote_sender_that_cannot_be_queued_is_retried(world: World, faults: FaultyCalls) -> None:
    queue_id = world.queue(sender="someone@far.test")
    faults.arm(fault="eio", where="/queue/messages/")  # the report's queue file
    world.attempt(queue_id, kind="bounced", status="5.1.1", text="550 5.1.1 no such user")
    faults.disarm()
    assert world.recipient(queue_id).status == "deferred"
    assert [e.queue_id for e in world.spool.queue.list()] == [queue_id]  # no half report queued
    assert sorted(p.name for p in world.spool.queue.messages.iterdir()) == [queue_id]
    world.now = world.recipient(queue_id).next_attempt
    world.attempt(queue_id, kind="bounced", status="5.1.1", text="550 5.1.1 no such user")
    [report] = world.spool.queue.list()
    assert report.sender == "" and [r.address for r in report.recipients] == ["someone@far.test"]


def test_a_delay_warning_that_cannot_be_stored_is_sent_at_the_next_deferral(
        world: World, faults: FaultyCalls) -> None:
    queue_id = world.queue()
    world.now += 5 * HOUR
    faults.arm(fault="edquot", where="/mail/")
    world.attempt(queue_id)
    faults.disarm()
    assert world.recipient(queue_id).delay_warned is False and world.inbox("alice@a.test") == []
    world.now = world.recipient(queue_id).next_attempt
    world.attempt(queue_id)
    [warning] = world.inbox("alice@a.test")
    assert warning["Subject"].startswith("Delayed Mail")
    assert world.recipient(queue_id).delay_warned is True


def test_a_postmaster_notice_that_cannot_be_stored_keeps_the_null_sender_mail(
        world: World, faults: FaultyCalls) -> None:
    queue_id = world.queue(sender="")
    faults.arm(fault="enospc", where="/mail/")
    world.attempt(queue_id, kind="bounced", status="5.1.1", text="550 5.1.1 no such user")
    faults.disarm()
    assert world.recipient(queue_id).status == "deferred"  # not "failed": nobody was told yet
    assert world.inbox("postmaster@a.test") == []
    world.now = world.recipient(queue_id).next_attempt
    world.attempt(queue_id, kind="bounced", status="5.1.1", text="550 5.1.1 no such user")
    assert len(world.inbox("postmaster@a.test")) == 1
    assert world.spool.queue.list() == []


def test_a_relayed_notice_that_cannot_be_stored_does_not_send_the_message_again(
        world: World, faults: FaultyCalls, caplog: pytest.LogCaptureFixture) -> None:
    queue_id = world.queue(notify=("SUCCESS",))
    faults.arm(fault="enospc", where="/mail/")
    with caplog.at_level(logging.WARNING, logger="taube.delivery"):
        world.attempt(queue_id, kind="sent", status="2.0.0", text="250 2.0.0 Ok")
    faults.disarm()
    assert world.spool.queue.list() == []  # delivered: done, whatever became of the notice
    assert world.inbox("alice@a.test") == []
    assert any('"relayed" notice' in r.message and r.levelno == logging.ERROR for r in caplog.records)


# -- one runner per data directory -------------------------------------------------------------------

async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


def test_a_second_runner_waits_for_the_lock_then_takes_over(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    second = QueueRunner(settings=world.settings, store=world.spool.queue, reporter=world.reporter,
                         resolver=Resolver(["127.0.0.1:9"]), clock=lambda: world.now)

    async def main() -> None:
        first_task = asyncio.create_task(world.runner.run())
        await _until(lambda: world.runner.lock.held)
        second_task = asyncio.create_task(second.run())
        await _until(lambda: "waiting for" in caplog.text)
        assert not second.lock.held
        assert f"(pid {os.getpid()})" in caplog.text and str(lock_path(world.root)) in caplog.text
        second.wake()  # a wake-up does not make it take the lock or deliver
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            assert not second.lock.held
            await asyncio.sleep(0.01)
        await world.runner.stop()
        await first_task
        await _until(lambda: second.lock.held, timeout=3 * LOCK_POLL)
        await second.stop()
        await second_task
        assert not second.lock.held

    with caplog.at_level(logging.INFO, logger="taube.delivery"):
        asyncio.run(main())


def test_a_waiting_runner_stops_at_once(world: World, caplog: pytest.LogCaptureFixture) -> None:
    holder = RunnerLock(lock_path(world.root))
    assert holder.try_acquire()

    async def main() -> None:
        task = asyncio.create_task(world.runner.run())
        await _until(lambda: "waiting for" in caplog.text)  # it is waiting for the lock now
        started = time.monotonic()
        await world.runner.stop()
        async with asyncio.timeout(LOCK_POLL / 2):
            await task
        assert time.monotonic() - started < LOCK_POLL / 2
        assert not world.runner.lock.held

    try:
        with caplog.at_level(logging.INFO, logger="taube.delivery"):
            asyncio.run(main())
    finally:
        holder.release()
