"""Outbound queue store: envelopes round-trip, message access, removal order, start-up repair."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import fields
from pathlib import Path

import pytest

from taube.queue import store as store_module
from taube.queue.envelope import Arrival, Envelope
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
    real_unlink, real_fsync_directory = os.unlink, store_module.fsync_directory

    def unlink(path: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        events.append(f"unlink {Path(path).parent.name}")
        real_unlink(path)

    def fsync_directory(path: Path) -> None:
        events.append(f"fsync {path.name}")
        real_fsync_directory(path)

    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(store_module, "fsync_directory", fsync_directory)
    queue.remove(queue_id)
    assert events == ["unlink envelopes", "fsync envelopes", "unlink messages"]
    assert queue.list() == [] and list(queue.messages.iterdir()) == []
    queue.remove(queue_id)  # already gone: fine


def test_remove_after_delivery_skips_the_directory_fsync(spool: Spool, queue: QueueStore,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    queue_id = receive(spool, remote("far@remote.test"))
    synced: list[Path] = []
    monkeypatch.setattr(store_module, "fsync_directory", synced.append)
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


# -- the envelope file format ---------------------------------------------------------------------
# Files exactly as the queue wrote them before the queue's records were restructured (byte for
# byte, from QueueEntry.to_json and from a commit): a queue left by an older build must load into
# the same entries, and what is written now must be the same JSON document (key order aside:
# JSON objects are unordered, RFC 8259 section 4).

WRITTEN_BY_A_RUNNER = (
    '{"version":1,"queue_id":"0dKq3Vx8PZ1a2","sender":"jörg@bücher.test","recipients":[{"address":'
    '"far@remote.test","original":"Far@Remote.test","status":"deferred","attempts":2,"last_error":'
    '"451 4.3.0 try again later","next_attempt":1764807300.5,"last_attempt":1764806700.25,'
    '"remote_mta":"mx.remote.test","notify":["FAILURE","DELAY"],"orcpt":"rfc822;far@remote.test",'
    '"delay_warned":true},{"address":"done@remote.test","original":"done@remote.test","status":'
    '"delivered","attempts":1,"last_error":null,"next_attempt":1764806400.123456,"last_attempt":'
    '1764806401.0,"remote_mta":"mx.remote.test","notify":null,"orcpt":null,"delay_warned":false}],'
    '"client_address":"2001:db8::25","helo":"client.example.org","received_at":1764806400.123456,'
    '"size":1234,"body_offset":38,"params":{"BODY":"8BITMIME","SMTPUTF8":"","RET":"HDRS",'
    '"ENVID":"QQ314159"}}'
).encode()

WRITTEN_BY_A_COMMIT = (
    '{"version":1,"queue_id":"0dKq3Vx8PZ1a3","sender":"","recipients":[{"address":"far@remote.test",'
    '"original":"Far@Remote.test","status":"queued","attempts":0,"last_error":null,"next_attempt":'
    '1796533124.863148,"last_attempt":null,"remote_mta":null,"notify":["SUCCESS","FAILURE"],"orcpt":'
    '"rfc822;Far@Remote.test","delay_warned":false}],"client_address":"192.0.2.1","helo":'
    '"client.test","received_at":1700000000.5,"size":74,"body_offset":17,"params":{"RET":"FULL",'
    '"ENVID":"abc+2Bdef"}}'
).encode()


@pytest.mark.parametrize("written, expected", [
    (WRITTEN_BY_A_RUNNER, QueueEntry(
        queue_id="0dKq3Vx8PZ1a2", sender="jörg@bücher.test", client_address="2001:db8::25",
        helo="client.example.org", received_at=1764806400.123456, size=1234, body_offset=38,
        params={"BODY": "8BITMIME", "SMTPUTF8": "", "RET": "HDRS", "ENVID": "QQ314159"},
        recipients=(
            QueuedRecipient(address="far@remote.test", original="Far@Remote.test",
                            status="deferred", attempts=2, last_error="451 4.3.0 try again later",
                            next_attempt=1764807300.5, last_attempt=1764806700.25,
                            remote_mta="mx.remote.test", notify=["FAILURE", "DELAY"],
                            orcpt="rfc822;far@remote.test", delay_warned=True),
            QueuedRecipient(address="done@remote.test", original="done@remote.test",
                            status="delivered", attempts=1, next_attempt=1764806400.123456,
                            last_attempt=1764806401.0, remote_mta="mx.remote.test"),
        ))),
    (WRITTEN_BY_A_COMMIT, QueueEntry(
        queue_id="0dKq3Vx8PZ1a3", sender="", client_address="192.0.2.1", helo="client.test",
        received_at=1700000000.5, size=74, body_offset=17,
        params={"RET": "FULL", "ENVID": "abc+2Bdef"},
        recipients=(QueuedRecipient(address="far@remote.test", original="Far@Remote.test",
                                    next_attempt=1796533124.863148, notify=["SUCCESS", "FAILURE"],
                                    orcpt="rfc822;Far@Remote.test"),))),
])
def test_envelopes_in_the_existing_format_load_and_are_written_alike(
        written: bytes, expected: QueueEntry, queue: QueueStore) -> None:
    assert QueueEntry.from_json(written) == expected
    assert json.loads(expected.to_json()) == json.loads(written)
    # And through the store, as the runner and `taube queue` read it.
    queue.envelope_path(expected.queue_id).write_bytes(written)
    (queue.messages / expected.queue_id).write_bytes(b"Return-Path: <>\r\n")
    assert queue.load(expected.queue_id) == expected
    assert queue.list() == [expected]


def test_an_entry_carries_every_field_of_how_the_message_arrived() -> None:
    """QueueEntry and Envelope share the Arrival fields; from_envelope copies each of them."""
    arrived = dict(queue_id="0ABCdef", sender="from@sender.test", client_address="192.0.2.7",
                   helo="client.test", received_at=1700000000.25, size=321,
                   params={"RET": "HDRS", "ENVID": "x1"})
    made = Envelope(**arrived, targets=(local("alice@example.test"), remote("far@remote.test")))
    queued = QueueEntry.from_envelope(made, body_offset=35, now=1700000001.0)
    assert {f.name: getattr(queued, f.name) for f in fields(Arrival)} == arrived
    assert queued.params is not made.params  # the entry owns its parameters
    assert queued.body_offset == 35
    assert queued.recipients == (QueuedRecipient(address="far@remote.test",
                                                 original="far@remote.test",
                                                 next_attempt=1700000001.0),)
