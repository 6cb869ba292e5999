"""``taube queue``: list, show and delete outbound queue entries made by the real spool."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from taube.cli.queue import format_due, format_duration, format_size, shorten
from taube.queue.envelope import Envelope, Target
from taube.queue.spool import QueuedRecipient, QueueStore, Spool
from taube.store.maildir import MaildirStore
from tests.unit.cli_helpers import run, write_config

HEADERS = b"Received: from client.test\r\nSubject: queued\r\n"
BODY = HEADERS + b"\r\nBody: not a header\r\n"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


def data_dir(config: Path) -> Path:
    return config.parent / "var"


def enqueue(config: Path, sender: str, *recipients: str, received_at: float | None = None) -> str:
    """Commit a message for remote ``recipients`` through the spool; return its queue id."""
    spool = Spool(data_dir(config), "mail.example.test", MaildirStore(data_dir(config) / "mail"))
    targets = tuple(Target(kind="remote", address=r.lower(), original=r) for r in recipients)
    queue_id = spool.new_queue_id()
    spooled = spool.open(queue_id, sender, targets)
    spooled.write(BODY)
    spooled.commit(Envelope(queue_id=queue_id, sender=sender, targets=targets,
                            client_address="192.0.2.1", helo="client.test",
                            received_at=time.time() if received_at is None else received_at,
                            size=spooled.size, params={"BODY": "8BITMIME"}))
    return queue_id


def queued_ids(config: Path) -> list[str]:
    return [entry.queue_id for entry in QueueStore(data_dir(config)).list()]


# -- the formatting helpers -------------------------------------------------------------------

@pytest.mark.parametrize(("seconds", "text"), [
    (-5, "0s"), (0, "0s"), (59.9, "59s"), (60, "1m"), (3599, "59m"), (3600, "1h"),
    (7200, "2h"), (86399, "23h"), (86400, "1d"), (3 * 86400 + 7200, "3d"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("octets", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (5 * 1024 * 1024, "5.0 MiB"), (3 * 1024**3, "3.0 GiB"), (2048 * 1024**3, "2048.0 GiB"),
])
def test_format_size(octets: int, text: str) -> None:
    assert format_size(octets) == text


def test_format_due() -> None:
    assert format_due(100.0, now=100.0) == "now"
    assert format_due(50.0, now=100.0) == "now"
    assert format_due(100.0 + 300, now=100.0) == "in 5m"


def test_shorten() -> None:
    assert shorten("451 4.7.1  try\r\n  later", 40) == "451 4.7.1 try later"
    assert shorten("x" * 20, 10) == "xxxxxxx..."
    assert len(shorten("y" * 100, 50)) == 50


# -- list -------------------------------------------------------------------------------------

def test_list_empty_queue(config: Path) -> None:
    listed = run(config, "queue", "list")
    assert (listed.returncode, listed.stdout, listed.stderr) == (0, "queue is empty\n", "")


def test_list_entries_oldest_first(config: Path) -> None:
    first = enqueue(config, "alice@example.test", "Bob@Remote.test", "carol@remote.test",
                    received_at=time.time() - 2 * 3600 - 5)
    second = enqueue(config, "", "dave@remote.test")
    # the queue runner's record of a failed attempt: one recipient done, one deferred
    store = QueueStore(data_dir(config))
    entry = store.load(first)
    later = time.time() + 600
    recipients = (
        QueuedRecipient(address="bob@remote.test", original="Bob@Remote.test", status="delivered",
                        attempts=1, next_attempt=0.0),
        QueuedRecipient(address="carol@remote.test", original="carol@remote.test",
                        status="deferred", attempts=1, next_attempt=later,
                        last_error="451 4.7.1 greylisted,\r\n please try again " + "much " * 20),
    )
    staged = store.stage(replace(entry, recipients=recipients))
    staged.rename(store.envelope_path(first))

    listed = run(config, "queue", "list")
    assert (listed.returncode, listed.stderr) == (0, "")
    lines = [line.split("\t") for line in listed.stdout.splitlines()]
    size = str(len(BODY))
    error = lines[0][6]
    assert lines[0][:6] == [first, "2h", size, "<alice@example.test>", "carol@remote.test", "in 9m"]
    assert error.startswith("451 4.7.1 greylisted, please try again much") and error.endswith("...")
    assert len(error) == 50
    assert lines[1][0] == second
    assert lines[1][2:] == [size, "<>", "dave@remote.test", "now", ""]
    assert lines[1][1] in {"0s", "1s", "2s"}


# -- show -------------------------------------------------------------------------------------

def test_show_envelope_and_headers(config: Path) -> None:
    queue_id = enqueue(config, "alice@example.test", "Bob@Remote.test", received_at=1700000000.0)
    shown = run(config, "queue", "show", queue_id)
    assert (shown.returncode, shown.stderr) == (0, "")
    envelope, headers = shown.stdout.split("\n\n")
    lines = envelope.splitlines()
    assert lines[0] == f"queue id:  {queue_id}"
    assert lines[1] == "sender:    <alice@example.test>"
    assert lines[2].startswith("arrival:   2023-11-14 22:13:20 UTC (")
    assert f"size:      {len(BODY)} octets ({len(BODY)} B)" in lines
    assert "recipient: <bob@remote.test> (original <Bob@Remote.test>)" in lines
    assert "  status queued, attempts 0, next attempt now" in lines
    # the header section only, without the Return-Path line the spool adds, with LF line ends
    assert headers == "Received: from client.test\nSubject: queued\n"


@pytest.mark.parametrize("queue_id", ["0NoSuchId", "../etc"])
def test_show_unknown_entry(config: Path, queue_id: str) -> None:
    enqueue(config, "alice@example.test", "bob@remote.test")
    shown = run(config, "queue", "show", queue_id)
    assert (shown.returncode, shown.stdout) == (1, "")
    assert shown.stderr == f"taube: no such queue entry: {queue_id}\n"


# -- delete -----------------------------------------------------------------------------------

def test_delete_one(config: Path) -> None:
    kept = enqueue(config, "alice@example.test", "bob@remote.test")
    gone = enqueue(config, "alice@example.test", "carol@remote.test")
    deleted = run(config, "queue", "delete", gone)
    assert (deleted.returncode, deleted.stdout, deleted.stderr) == (0, "1 queue entry deleted\n", "")
    assert queued_ids(config) == [kept]
    assert not QueueStore(data_dir(config)).message_path(gone).exists()
    again = run(config, "queue", "delete", gone)
    assert (again.returncode, again.stderr) == (1, f"taube: no such queue entry: {gone}\n")


def test_delete_all(config: Path) -> None:
    ids = [enqueue(config, "alice@example.test", f"user{n}@remote.test") for n in range(3)]
    deleted = run(config, "queue", "delete", "--all")
    assert (deleted.returncode, deleted.stdout, deleted.stderr) == (0, "3 queue entries deleted\n", "")
    assert queued_ids(config) == []
    store = QueueStore(data_dir(config))
    assert not any(store.message_path(i).exists() for i in ids)
    assert run(config, "queue", "list").stdout == "queue is empty\n"
    assert run(config, "queue", "delete", "--all").stdout == "0 queue entries deleted\n"


@pytest.mark.parametrize("args", [(), ("0SomeId", "--all")])
def test_delete_needs_an_id_or_all(config: Path, args: tuple[str, ...]) -> None:
    queue_id = enqueue(config, "alice@example.test", "bob@remote.test")
    refused = run(config, "queue", "delete", *args)
    assert (refused.returncode, refused.stdout) == (2, "")
    assert "Usage: taube queue delete" in refused.stderr
    assert "give either a queue ID or --all" in refused.stderr
    assert queued_ids(config) == [queue_id]


# -- flush and retry without a running server -------------------------------------------------

def requests(config: Path) -> list[dict]:
    import json

    folder = data_dir(config) / "queue" / "requests"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []


def test_flush_with_nothing_waiting(config: Path) -> None:
    result = run(config, "queue", "flush")
    assert result.returncode == 0 and "no messages waiting" in result.stdout
    enqueue(config, "a@example.test", "x@remote.test")
    result = run(config, "queue", "flush", "other.test")
    assert result.returncode == 0 and "no messages waiting for other.test" in result.stdout
    assert requests(config) == []


def test_flush_leaves_a_request_for_the_next_start(config: Path) -> None:
    enqueue(config, "a@example.test", "x@sub.remote.test")
    result = run(config, "queue", "flush", "@remote.test")
    assert result.returncode == 0, result.stderr
    assert "not running" in result.stdout
    assert requests(config) == [{"action": "flush", "domain": "remote.test", "subdomains": True}]


def test_retry(config: Path) -> None:
    queue_id = enqueue(config, "a@example.test", "x@remote.test")
    result = run(config, "queue", "retry", queue_id)
    assert result.returncode == 0 and "not running" in result.stdout
    assert requests(config) == [{"action": "retry", "id": queue_id}]
    missing = run(config, "queue", "retry", "0000000000000")
    assert missing.returncode == 1 and "no such queue entry: 0000000000000" in missing.stderr
    bad = run(config, "queue", "retry", "../etc")
    assert bad.returncode == 1 and "no such queue entry" in bad.stderr


def test_stale_pid_file_is_not_signalled(config: Path) -> None:
    enqueue(config, "a@example.test", "x@remote.test")
    (data_dir(config) / "taube.pid").write_text(f"{os.getpid()}\n")  # this test process: no taube
    result = run(config, "queue", "flush")
    assert "not running" in result.stdout
