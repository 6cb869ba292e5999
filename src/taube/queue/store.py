"""The outbound queue on disk: queue ids, the queue's record of a message, and the store.

Layout under ``<data_dir>/queue``::

    messages/<id>        the message as received (CRLF), ``Return-Path: <sender>`` line first;
                         written (or hard-linked) by the spool's commit
    envelopes/<id>.json  the message's :class:`QueueEntry` (sender, per-recipient delivery state),
                         the queue's commit marker: it appears last, by an atomic rename
    envelopes/<id>.json.tmp  an envelope being written (commit, save); never read, one left
                         by a crash is dropped at start

Every envelope is written through :mod:`taube.store.durable` (all bytes, fsync'd, nothing
partial) and published by rename, so a reader sees a whole envelope or none.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import string
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import BinaryIO

from ..store import durable
from ..store.durable import DirectorySyncs, fsync_directory
from .envelope import Arrival, Envelope

__all__ = [
    "FINAL",
    "PENDING",
    "QueueEntry",
    "QueueIds",
    "QueueStore",
    "QueuedRecipient",
    "check_queue_id",
]

# The name the queue's messages were always logged under, kept when the store got its module.
log = logging.getLogger("taube.spool")

# Digits, then upper, then lower case: ASCII order, so fixed-width numbers sort like strings.
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_QUEUE_ID = re.compile(r"[0-9A-Za-z]{1,64}")
_ENVELOPE_VERSION = 1
_ENVELOPE_SUFFIX = ".json"
_STAGED_SUFFIX = ".json.tmp"


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(_BASE62[digit])
    if number:
        raise OverflowError(f"does not fit in {width} base-62 digits")
    return "".join(reversed(digits))


def check_queue_id(queue_id: str) -> str:
    """Queue ids become file names: only ``[0-9A-Za-z]`` so no id can escape its directory."""
    if not _QUEUE_ID.fullmatch(queue_id):
        raise ValueError(f"invalid queue id {queue_id!r}")
    return queue_id


class QueueIds:
    """Queue ids like Postfix's long ones: unique across processes and restarts, time-sortable.

    13 characters ``[0-9A-Za-z]``: 9 base-62 digits of microseconds since the epoch (good until
    the year 2398), then 4 of the process id (Linux ``pid_max`` is at most 2**22 < 62**4). Within
    a process the microseconds are made strictly increasing, so ids are unique without a counter;
    concurrent processes differ in pid, and a restarted process reusing a pid does so much later
    in time. Should the clock be stepped back and a pid reused at the same microsecond, files
    are still created exclusively (``O_EXCL``, ``link``): the transaction fails, nothing is lost.
    """

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            now = max(time.time_ns() // 1000, self._last + 1)
            self._last = now
        return _base62(now, 9) + _base62(os.getpid(), 4)


# Recipient states: still to be tried, and final (see QueuedRecipient.status).
PENDING = frozenset({"queued", "deferred"})
FINAL = frozenset({"delivered", "bounced", "failed"})


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuedRecipient:
    """Delivery state of one remote recipient; the queue runner replaces it as it tries."""

    address: str
    original: str
    # "queued" (not tried yet), "deferred" (temporary failure, retried at next_attempt),
    # "delivered" (the next hop said 2xx), "bounced" (permanent failure, reported), "failed"
    # (permanent failure that could not be reported: null sender). The last three are final.
    status: str = "queued"
    attempts: int = 0
    last_error: str | None = None
    next_attempt: float
    last_attempt: float | None = None
    remote_mta: str | None = None  # the host that gave last_error (Remote-MTA of a report)
    notify: list[str] | None = None  # RFC 3461 NOTIFY, None: not given
    orcpt: str | None = None  # RFC 3461 ORCPT, decoded: "rfc822;user@example.org"
    delay_warned: bool = False  # a "delayed" notice has been sent


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueEntry(Arrival):
    """One message in the outbound queue, as stored in ``envelopes/<id>.json``: how it arrived
    (the fields of :class:`Arrival`, under their own names in the file) and the state of each
    remote recipient."""

    recipients: tuple[QueuedRecipient, ...]
    body_offset: int  # where the message starts in the data file: after Return-Path

    @classmethod
    def from_envelope(cls, envelope: Envelope, body_offset: int, now: float) -> QueueEntry:
        """The entry for the remote recipients of ``envelope``, all due at once."""
        recipients = tuple(
            QueuedRecipient(address=t.address, original=t.original, next_attempt=now,
                            notify=list(t.notify) if t.notify is not None else None,
                            orcpt=t.orcpt)
            for t in envelope.remote
        )
        # Every Arrival field by name, so that one added there is carried without a change
        # here; params copied, the entry must not share the session's dict.
        arrival = {f.name: getattr(envelope, f.name) for f in fields(Arrival)}
        arrival["params"] = dict(envelope.params)
        return cls(**arrival, recipients=recipients, body_offset=body_offset)

    def waiting_for(self, domain: str | None, subdomains: bool = False) -> set[str]:
        """The pending recipients in ``domain`` (lower case; None: any domain), with
        ``subdomains`` also those below it: what ETRN and ``taube queue flush`` concern."""
        waiting = set()
        for r in self.recipients:
            where = r.address.rpartition("@")[2].lower()
            if r.status in PENDING and (domain is None or where == domain
                                        or (subdomains and where.endswith("." + domain))):
                waiting.add(r.address)
        return waiting

    def to_json(self) -> bytes:
        document = {"version": _ENVELOPE_VERSION, **asdict(self)}
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> QueueEntry:
        document = json.loads(data)
        version = document.pop("version", None)
        if version != _ENVELOPE_VERSION:
            raise ValueError(f"unsupported queue envelope version {version!r}")
        recipients = tuple(QueuedRecipient(**r) for r in document.pop("recipients"))
        return cls(recipients=recipients, **document)


class QueueStore:
    """The durable outbound queue under ``<data_dir>/queue``: ``messages/`` and ``envelopes/``.

    Invariant, kept across crashes: an envelope never exists without its data file. Commit
    links the data (and fsyncs ``messages/``) before the envelope appears; :meth:`remove` takes
    the envelope away (durably) before the data; :meth:`recover` drops data left without an
    envelope by a crash in between. The data files are stored exactly as received (CRLF), with
    the ``Return-Path`` line first.
    """

    def __init__(self, data_dir: Path, syncs: DirectorySyncs | None = None) -> None:
        self.messages = data_dir / "queue" / "messages"
        self.envelopes = data_dir / "queue" / "envelopes"
        # Directory fsyncs of save/remove: grouped with concurrent ones when given (the server),
        # one each otherwise (the CLI).
        self._syncs = syncs
        # list(): the entries parsed so far, by file name, with the (inode, mtime, size) they
        # were parsed at; and the damaged files already reported.
        self._parsed: dict[str, tuple[tuple[int, int, int], QueueEntry]] = {}
        self._damaged: set[str] = set()

    def _sync_envelopes(self) -> None:
        if self._syncs is not None:
            self._syncs.sync(self.envelopes)
        else:
            fsync_directory(self.envelopes)

    def message_path(self, queue_id: str) -> Path:
        return self.messages / check_queue_id(queue_id)

    def envelope_path(self, queue_id: str) -> Path:
        return self.envelopes / (check_queue_id(queue_id) + _ENVELOPE_SUFFIX)

    def stage(self, entry: QueueEntry, *, sync: bool = True) -> Path:
        """Write ``entry`` to a temporary file next to its envelope and fsync it; return the
        file. Invisible until renamed to :meth:`envelope_path` (rename is atomic: a reader sees
        the whole old envelope or the whole new one). The caller fsyncs ``envelopes/`` after."""
        staged = self.envelopes / (check_queue_id(entry.queue_id) + _STAGED_SUFFIX)
        durable.write_file(staged, entry.to_json(), replace=True, sync=sync)
        return staged

    def save(self, entry: QueueEntry) -> None:
        """Replace the envelope of ``entry`` atomically and durably (the queue runner's record of
        an attempt). FileNotFoundError if the entry is no longer queued (deleted meanwhile)."""
        target = self.envelope_path(entry.queue_id)
        if not target.exists():
            raise FileNotFoundError(target)
        durable.replace_file(target, entry.to_json(), sync_directory=False,
                             staged=self.envelopes / (entry.queue_id + _STAGED_SUFFIX))
        self._sync_envelopes()  # grouped with concurrent commits' fsyncs of envelopes/

    def load(self, queue_id: str) -> QueueEntry:
        """The entry of ``queue_id``; FileNotFoundError if it is not (or no longer) queued."""
        return QueueEntry.from_json(self.envelope_path(queue_id).read_bytes())

    def open_message(self, queue_id: str, body_offset: int | None = None) -> BinaryIO:
        """The message of ``queue_id`` as received (CRLF), positioned after the Return-Path line
        (``body_offset`` of its entry: read from the envelope unless given)."""
        offset = self.load(queue_id).body_offset if body_offset is None else body_offset
        message = open(self.message_path(queue_id), "rb")
        message.seek(offset)
        return message

    def remove(self, queue_id: str, *, durable: bool = True) -> None:
        """Forget ``queue_id`` (delivered or bounced).

        The envelope goes first, then the data: a crash in between leaves data without
        envelope, which :meth:`recover` drops. With ``durable`` the envelope's removal is made
        durable (fsync of ``envelopes/``) before the data goes. The queue runner passes False
        after a delivery, as Postfix does when it removes a queue file: a crash can then bring
        the envelope back and the message is delivered once more (at-least-once), and should
        the data's removal survive without the envelope's, :meth:`recover` drops the envelope.
        """
        with contextlib.suppress(FileNotFoundError):
            self.envelope_path(queue_id).unlink()
            if durable:
                self._sync_envelopes()
        self.message_path(queue_id).unlink(missing_ok=True)

    def recover(self) -> None:
        """At start, before any commit: drop staged envelopes never renamed (their transaction
        was never acknowledged), data files without an envelope (same, or half removed), and
        envelopes without data (half removed, see :meth:`remove`)."""
        queued = set()
        for path in self.envelopes.iterdir():
            if path.name.endswith(_STAGED_SUFFIX):
                path.unlink()
            elif path.name.endswith(_ENVELOPE_SUFFIX):
                queued.add(path.name[: -len(_ENVELOPE_SUFFIX)])
        for path in self.messages.iterdir():
            if path.name in queued:
                queued.remove(path.name)
            else:
                log.info("queue: dropping orphan data file %s", path.name)
                path.unlink()
        for queue_id in sorted(queued):
            # Only remove() deletes data, after the envelope: this entry was being removed
            # (delivered) when the system went down. Nothing is left to deliver.
            log.warning("queue: envelope %s has no data file (removed just before a crash); "
                        "dropping it", queue_id)
            self.envelope_path(queue_id).unlink(missing_ok=True)

    def ids(self) -> list[str]:
        """The ids of every queued entry, oldest first, without reading the envelopes (so a
        damaged one is included)."""
        return sorted(p.name[: -len(_ENVELOPE_SUFFIX)] for p in self.envelopes.glob("*" + _ENVELOPE_SUFFIX))

    def list(self) -> list[QueueEntry]:
        """All queued entries, oldest first (queue ids sort by time). A damaged envelope is
        logged (once per store) and skipped, so that one bad file never stops the rest of the
        queue; it stays on disk for inspection (``taube queue show`` / ``delete`` by its id).

        An envelope is parsed again only when its file changed (every save is a new file: a new
        inode), so listing a large queue of waiting messages again, as the queue runner does,
        costs a directory listing and a stat per entry, not a JSON parse."""
        try:
            with os.scandir(self.envelopes) as listing:
                files = sorted((e.name, e) for e in listing if e.name.endswith(_ENVELOPE_SUFFIX))
        except FileNotFoundError:
            return []
        parsed: dict[str, tuple[tuple[int, int, int], QueueEntry]] = {}
        for name, dir_entry in files:
            try:
                st = dir_entry.stat()
                key = (st.st_ino, st.st_mtime_ns, st.st_size)
                known = self._parsed.get(name)
                if known is None or known[0] != key:
                    with open(dir_entry.path, "rb") as f:
                        known = (key, QueueEntry.from_json(f.read()))
                parsed[name] = known
            except FileNotFoundError:  # removed while we were listing
                continue
            except (ValueError, TypeError, KeyError) as e:
                if name not in self._damaged:
                    log.error("queue: damaged envelope %s skipped: %s", name, e)
                    self._damaged.add(name)
        self._parsed = parsed
        return [entry for _, entry in parsed.values()]
