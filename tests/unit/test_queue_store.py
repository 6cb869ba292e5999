"""Outbound queue store: envelopes round-trip, message access, removal order, start-up repair."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from taube.queue import spool as spool_module
from taube.queue.spool import QueuedRecipient, QueueEntry, QueueStore, Spool
from tests.unit.test_spool import BODY, local, make_spool, receive, remote


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return make_spool(tmp_path)


@pytest.fixture
def queue(tmp_path: Path, spool: Spool) -> QueueStore:
    return QueueStore(tmp_path)


def entry(queue_id: str = "0ABCdef") -> QueueEntry:
    return QueueEntry(
        queue_id=queue_id, sender="", client_address="2001:db8::1", helo="h", received_at=1.5,
        size=10, body_offset=17, params={"SMTPUTF8": ""},
        recipients=(QueuedRecipient(address="jörg@bücher.test", original="J@b.test",
                                    next_attempt=2.0, attempts=3, last_error="451 later",
                                    status="deferred"),),
    )


def test_entry_round_trips_through_json() -> None:
    assert QueueEntry.from_json(entry().to_json()) == entry()


def test_entry_json_is_versioned_and_readable() -> None:
    document = json.loads(entry().to_json())
    assert document["version"] == 1
    assert document["recipients"][0]["address"] == "jörg@bücher.test"
    assert set(document) >= {"sender", "params", "client_address", "helo", "received_at",
                             "body_offset", "size", "queue_id"}
    document["version"] = 99
    with pytest.raises(ValueError):
        QueueEntry.from_json(json.dumps(document).encode())


def test_load_and_open_message_after_return_path(spool: Spool, queue: QueueStore) -> None:
    queue_id = receive(spool, remote("far@remote.test"), sender="bounce@sender.test")
    loaded = queue.load(queue_id)
    assert loaded.sender == "bounce@sender.test"
    assert loaded.client_address == "192.0.2.1" and loaded.helo == "client.test"
    assert loaded.body_offset == len(b"Return-Path: <bounce@sender.test>\r\n")
    assert loaded.recipients[0].next_attempt > 0 and loaded.recipients[0].last_error is None
    with queue.open_message(queue_id) as message:
        assert message.read() == BODY  # CRLF kept, byte for byte


def test_list_is_oldest_first_and_ignores_staged_envelopes(spool: Spool, queue: QueueStore) -> None:
    ids = [receive(spool, remote(f"r{i}@remote.test")) for i in range(5)]
    receive(spool, local("alice@example.test"))  # local only: not queued
    queue.stage(entry("Zstaged"))
    assert [e.queue_id for e in queue.list()] == ids


def test_unknown_and_invalid_ids(queue: QueueStore) -> None:
    with pytest.raises(FileNotFoundError):
        queue.load("0nothere")
    with pytest.raises(ValueError):
        queue.load("../../etc/passwd")
    with pytest.raises(ValueError):
        queue.open_message("a.b")


def test_remove_takes_envelope_then_data(spool: Spool, queue: QueueStore,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    queue_id = receive(spool, remote("far@remote.test"))
    events: list[str] = []
    real_unlink, real_fsync_directory = os.unlink, spool_module.fsync_directory

    def unlink(path: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        events.append(f"unlink {Path(path).parent.name}")
        real_unlink(path)

    def fsync_directory(path: Path) -> None:
        events.append(f"fsync {path.name}")
        real_fsync_directory(path)

    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(spool_module, "fsync_directory", fsync_directory)
    queue.remove(queue_id)
    assert events == ["unlink envelopes", "fsync envelopes", "unlink messages"]
    assert queue.list() == [] and list(queue.messages.iterdir()) == []
    queue.remove(queue_id)  # already gone: fine


def test_remove_after_delivery_skips_the_directory_fsync(spool: Spool, queue: QueueStore,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    queue_id = receive(spool, remote("far@remote.test"))
    synced: list[Path] = []
    monkeypatch.setattr(spool_module, "fsync_directory", synced.append)
    queue.remove(queue_id, durable=False)
    assert synced == []
    assert queue.list() == [] and list(queue.messages.iterdir()) == []


def test_crash_inside_remove_leaves_data_that_recover_drops(spool: Spool, queue: QueueStore) -> None:
    queue_id = receive(spool, remote("far@remote.test"))
    queue.envelope_path(queue_id).unlink()  # remove() died right after its first step
    queue.recover()
    assert list(queue.messages.iterdir()) == []


def test_recover_repairs_only_what_is_broken(spool: Spool, queue: QueueStore,
                                             caplog: pytest.LogCaptureFixture) -> None:
    kept = receive(spool, remote("far@remote.test"))
    (queue.messages / "0orphan").write_bytes(b"Return-Path: <>\r\n")
    queue.stage(entry("0staged"))
    lost = receive(spool, remote("x@remote.test"))
    queue.message_path(lost).unlink()
    with caplog.at_level(logging.INFO, logger="taube.spool"):
        queue.recover()
    assert sorted(p.name for p in queue.messages.iterdir()) == [kept]
    # An envelope whose data is gone was half removed (see remove(durable=False)): dropped.
    assert sorted(p.name for p in queue.envelopes.iterdir()) == [f"{kept}.json"]
    assert any("0orphan" in r.message for r in caplog.records)
    assert any(lost in r.message and r.levelno == logging.WARNING for r in caplog.records)


def test_spool_recover_also_repairs_the_queue(spool: Spool, queue: QueueStore) -> None:
    (queue.messages / "0orphan").write_bytes(b"x")
    spool.recover()
    assert list(queue.messages.iterdir()) == []


def test_a_damaged_envelope_is_skipped_and_logged(spool: Spool, queue: QueueStore,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    good = receive(spool, remote("far@remote.test"))
    (queue.envelopes / "0000damaged.json").write_bytes(b"{not json")
    with caplog.at_level(logging.ERROR, logger="taube.spool"):
        assert [e.queue_id for e in queue.list()] == [good]
    assert "damaged envelope 0000damaged.json" in caplog.text


def test_ids_include_damaged_envelopes(spool: Spool, queue: QueueStore) -> None:
    good = receive(spool, remote("far@remote.test"))
    (queue.envelopes / "0000damaged.json").write_bytes(b"{not json")
    assert queue.ids() == sorted([good, "0000damaged"])
