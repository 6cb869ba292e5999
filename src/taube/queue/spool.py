"""The spool: where a message is written while it arrives, and made durable before the 250.

"Responsibility after 250": the SMTP server answers ``250 2.0.0 Ok: queued as <id>`` only after
:meth:`SpoolFile.commit` returned, and then the message is on stable storage in every local
recipient's Maildir and, for remote recipients, in the outbound queue. Until commit returns
nothing is visible anywhere, whatever happens (crash, disk full, I/O error).

Where the file is while it arrives, and where it ends::

    <maildir>/tmp/<id>.spool  with a local recipient: the first one's Maildir (Maildir protocol);
                              renamed into its ``new/`` at commit, hard-linked into the others'
    queue/messages/<id>       remote-only mail is written here directly (invisible until its
                              envelope exists); with local recipients too, a hard link
    queue/envelopes/<id>.json outbound queue envelope, the queue's commit marker (written last)

Every stored copy starts with ``Return-Path: <sender>`` and then holds the message exactly as
received (trace headers included), CRLF line ends and all: one byte-exact file that a POP3
server can serve with the size it announces. The only edits are the ones the checks ask for at
the end of DATA: header lines put above it (:meth:`SpoolFile.prepend`) and forged header fields
left out (:meth:`SpoolFile.drop`). Local copies keep the Return-Path line (RFC 5321
4.4: the final delivery adds it); the queue records ``body_offset`` to skip it when relaying.

The body is written once. Local copies and the queue's data file are hard links of that one file,
so per message the cost is one data fsync plus one fsync per directory that gained a name (see
:meth:`SpoolFile.commit`). Every write, link and rename goes through :mod:`taube.store.durable`
(all bytes or an error, the partial file removed), so a short write can never tear a message.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import itertools
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from ..store import durable
from ..store.durable import (
    COPY_CHUNK,
    DirectorySyncs,
    DurableFile,
    StorageError,
    StorageFullError,
    fsync_directory,
    storage_error,
)
from ..store.maildir import MaildirStore, create_directories, maildir_filename
from ..store.space import FreeSpace
from .envelope import Envelope, Target
from .store import FINAL, PENDING, QueuedRecipient, QueueEntry, QueueIds, QueueStore, check_queue_id

# The queue's records and store are in .store; delivery/, the CLI and the SMTP session also
# import them (and the storage errors) from here.
__all__ = [
    "FINAL",
    "PENDING",
    "QueueEntry",
    "QueueStore",
    "QueuedRecipient",
    "Spool",
    "SpoolFile",
    "StorageError",
    "StorageFullError",
]

# Content kept in memory before it goes to the spool file: large enough that a typical message
# reaches the kernel in one write(2) at commit, small enough that thousands of concurrent
# transactions do not add up to much memory.
SPILL_THRESHOLD = 128 * 1024

# Threads that run the independent fsyncs of one commit side by side (see SpoolFile._sync).
_FSYNC_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="taube-fsync")


def _run_together(jobs: list[Callable[[], None]]) -> None:
    """Run ``jobs`` at the same time (the first in this thread) and wait for all of them;
    the first error is raised once all have finished."""
    futures = [_FSYNC_POOL.submit(job) for job in jobs[1:]]
    error: BaseException | None = None
    try:
        jobs[0]()
    except BaseException as exc:
        error = exc
    for future in futures:
        try:
            future.result()
        except BaseException as exc:
            error = error or exc
    if error is not None:
        raise error


def _make_durable_directories(paths: Iterable[Path]) -> None:
    """Create missing directories and fsync the parents of those created."""
    parents = {d.parent for path in paths for d in create_directories(path)}
    for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        fsync_directory(parent)


class Spool:
    """Creates spool files for arriving messages; one per process, shared by all connections."""

    def __init__(self, data_dir: Path, hostname: str, maildirs: MaildirStore) -> None:
        self.hostname = hostname
        self.maildirs = maildirs
        self.syncs = DirectorySyncs()  # group commit of the directory fsyncs of all commits
        self.queue = QueueStore(data_dir, self.syncs)
        self.space = FreeSpace(data_dir)  # the [smtp] min_free_space check at MAIL FROM
        self._ids = QueueIds()
        _make_durable_directories((self.queue.messages, self.queue.envelopes))

    def new_queue_id(self) -> str:
        """A fresh queue id, see :class:`QueueIds`."""
        return self._ids.next()

    def open(self, queue_id: str, sender: str, targets: Iterable[Target]) -> SpoolFile:
        """Start the message ``queue_id`` for ``targets`` with the ``Return-Path: <sender>`` line.

        The file is born where it will live, so that committing it is a rename, never a copy or a
        create-and-unlink churn in one shared directory (which costs the kernel dearly: every
        create and unlink takes the directory's lock, and ext4 scans for recently deleted
        inodes): in the first local recipient's Maildir ``tmp/`` (as the Maildir protocol
        writes), or for remote-only mail directly as the queue's data file ``messages/<id>``
        (invisible until its envelope exists).

        Nothing touches the disk yet: the content is buffered in memory up to
        :data:`SPILL_THRESHOLD` octets and the file is created by :meth:`SpoolFile.spill` or
        :meth:`SpoolFile.commit`, both run in a worker thread. Creating a file waits on the
        filesystem journal, which is busy with other messages' fsyncs; on the event loop that
        wait would stall every connection.
        """
        if "\r" in sender or "\n" in sender:
            raise ValueError(f"line break in sender {sender!r}")
        check_queue_id(queue_id)
        local = [t for t in targets if t.kind == "local"]
        home = self.maildirs.maildir_path(local[0].address) if local else None
        path = home / "tmp" / f"{queue_id}.spool" if home else self.queue.message_path(queue_id)
        header = b"Return-Path: <" + sender.encode("utf-8") + b">\r\n"
        return SpoolFile(self, queue_id, path, header, home)

    def recover(self) -> None:
        """At start, before accepting mail: repair the outbound queue (:meth:`QueueStore.recover`
        drops data files that never got their envelope: never acknowledged). Half-written files
        in a Maildir's ``tmp/`` are invisible to readers and removed by
        :meth:`MaildirStore.ensure` after 36 hours, as the Maildir specification says."""
        self.queue.recover()


class SpoolFile:
    """One arriving message: :meth:`write` the chunks, then :meth:`commit` or :meth:`abort`.

    :meth:`write` runs on the event loop and only appends to a memory buffer; once
    :attr:`needs_spill` is true the caller runs :meth:`spill` in a worker thread, which moves the
    buffer to the spool file (see :meth:`Spool.open`). So a connection never holds more than about
    :data:`SPILL_THRESHOLD` octets plus one read, whatever the message size. :meth:`commit`
    blocks on fsync and runs in a worker thread too. The content is stored byte for byte as
    written, so the caller writes CRLF line ends; :meth:`prepend` and :meth:`drop` edit it at
    commit, and :meth:`open_content` reads it back as written.
    """

    def __init__(self, spool: Spool, queue_id: str, path: Path, header: bytes,
                 home: Path | None) -> None:
        self.queue_id = queue_id
        self.size = 0  # octets stored after the Return-Path line: written, prepended, not dropped
        self._written = 0  # octets given to write(): the content, as the caller counts it
        self._spool = spool
        self._path = path
        self._home = home  # the Maildir whose tmp/ holds the file, None: it is the queue's
        self._kept = False  # committed: the file is in its final place
        self._buffer = bytearray(header)
        self._file: DurableFile | None = None
        self._header = header  # the Return-Path line
        self._header_size = len(header)
        self._prepend = bytearray()  # header lines to go between Return-Path and the content
        self._drops: list[tuple[int, int]] = []  # content octets left out at commit, sorted
        self._error: OSError | None = None
        self._finished = False

    @property
    def needs_spill(self) -> bool:
        return len(self._buffer) >= SPILL_THRESHOLD and self._error is None

    def write(self, data: bytes) -> None:
        """Append ``data`` to the memory buffer (no I/O)."""
        if self._finished:
            raise StorageError(f"{self.queue_id}: spool file already committed or aborted")
        self.size += len(data)
        self._written += len(data)
        if self._error is None:
            self._buffer += data

    def prepend(self, lines: bytes) -> None:
        """Put header ``lines`` (complete, CRLF-terminated, e.g. Authentication-Results or
        DKIM-Signature) above everything written so far: right after the Return-Path line, so
        above taube's Received. Call it before the envelope is made: :attr:`size` counts them.

        No I/O. A message still in memory at :meth:`commit` (up to :data:`SPILL_THRESHOLD`)
        is then written in one piece as always; one already spilled to its file is copied once
        into a new file that starts with the prepended lines (see :meth:`_rewrite`)."""
        if self._finished:
            raise StorageError(f"{self.queue_id}: spool file already committed or aborted")
        body = bytes(lines)
        if (not body.endswith(b"\r\n") or b"\r\n\r\n" in body or body.startswith(b"\r\n")
                or b"\r" in body.replace(b"\r\n", b"") or b"\n" in body.replace(b"\r\n", b"")):
            raise ValueError("prepended header lines must be complete CRLF lines, without an empty line")
        self._prepend += body
        self.size += len(body)

    def drop(self, ranges: Iterable[tuple[int, int]], *, base: int) -> None:
        """Leave the octets of ``ranges`` out of what is stored: forged Authentication-Results
        fields, which RFC 8601 section 5 asks to remove before delivery.

        ``ranges`` are ``(start, end)`` octet offsets relative to the message, which starts
        ``base`` octets into the content (counted as :meth:`open_content` counts: taube writes
        its Received first, so ``base`` is that line's length). They must be non-empty, sorted,
        apart from each other and from those dropped before, and within what was written;
        nothing before ``base`` can be dropped. Otherwise ValueError, and nothing is dropped.
        Call it after the last :meth:`write` and before the envelope is made: :attr:`size`
        shrinks at once.

        No I/O. As with :meth:`prepend`, the edit is made at :meth:`commit`: a message still in
        memory is written without those octets in one piece; one already spilled is copied
        once, by the same copy that puts the prepended lines in (:meth:`_rewrite`)."""
        if self._finished:
            raise StorageError(f"{self.queue_id}: spool file already committed or aborted")
        if not 0 <= base <= self._written:
            raise ValueError(f"message start {base} outside the {self._written} octets written")
        wanted = [(base + start, base + end) for start, end in ranges]
        pos = base
        for start, end in wanted:
            if not pos <= start < end <= self._written:
                raise ValueError(f"drop range {(start - base, end - base)} empty, unsorted, "
                                 f"overlapping or outside the {self._written - base} octets of the message")
            pos = end
        merged = sorted(self._drops + wanted)
        if any(end > start for (_, end), (start, _) in itertools.pairwise(merged)):
            raise ValueError("drop ranges overlap ranges dropped before")
        self._drops = merged
        self.size -= sum(end - start for start, end in wanted)

    def open_content(self, start: int = 0) -> BinaryIO:
        """The content written so far, from octet ``start`` on, as a binary file positioned
        there; the caller closes it.

        ``start`` counts as :attr:`size` does, from the first octet given to :meth:`write`
        (the Return-Path line is never part of it): taube's Received comes first, so passing
        its length gives the message as the client sent it, for DKIM verification or signing.
        It is the content as written: lines from :meth:`prepend` are not in it and octets
        passed to :meth:`drop` still are (both are applied at commit), and nothing written
        after this call is.

        While the content is in memory, a copy of it (at most about :data:`SPILL_THRESHOLD`
        octets); once it was spilled, the rest of the buffer is spilled too and the spool file
        opened read-only. So it may block on the disk: run it in a worker thread, as
        :meth:`spill`, and before :meth:`commit`. StorageError when the content is gone (a
        spill failed, which commit reports as well) or cannot be opened."""
        if self._finished:
            raise StorageError(f"{self.queue_id}: spool file already committed or aborted")
        if not 0 <= start <= self._written:
            raise ValueError(f"offset {start} outside the {self._written} octets written")
        if self._file is not None:
            self._spill()  # the file holds everything written so far
        if self._error is not None:
            raise storage_error(self._error)
        offset = self._header_size + start
        if self._file is None:
            # BytesIO copies the view, which is released at once: the buffer stays resizable.
            with memoryview(self._buffer) as whole, whole[offset:] as content:
                return io.BytesIO(content)
        try:
            reader = open(self._path, "rb")  # the caller closes it
        except OSError as exc:
            raise storage_error(exc) from exc
        reader.seek(offset)
        return reader

    def spill(self) -> None:
        """Move the buffer to the spool file (blocking: run it in a worker thread).

        A storage error is kept for :meth:`commit` to report (the client can only be answered
        after the final dot, as Postfix's cleanup does); the rest of the message is then counted
        but dropped, and the file removed at once to free the space."""
        if not self._finished:
            self._spill()

    def _spill(self) -> None:
        if self._error is not None:
            return
        try:
            if self._file is None:
                if self._home is not None:
                    self._spool.maildirs.ensure(self._home)
                self._file = DurableFile(self._path)  # closed by commit/_discard
            self._file.write(self._buffer)  # every byte, or OSError (see store/durable.py)
        except OSError as exc:
            self._error = exc
            self._discard()
        finally:
            self._buffer.clear()

    def commit(self, envelope: Envelope) -> None:
        """Make the message durable for every target; return only when it is.

        Steps, with the fsyncs they cost:

        1. write out the data; remote targets: link ``messages/<id>`` (unless the file is
           already there) and write the envelope to a staged file (invisible so far);
        2. fsync the data and, with remote targets, the staged envelope and ``messages/``: 1 or
           3 fsyncs, run side by side (:meth:`_sync`);
        3. link the file into each other distinct Maildir's ``new/``, then rename it from
           ``tmp/`` into its own Maildir's ``new/`` (visible to readers now);
        4. remote targets: rename the staged envelope to ``envelopes/<id>.json`` (the queue's
           commit marker, last);
        5. fsync each distinct ``new/`` and, with remote targets, ``envelopes/``: 1 fsync per
           Maildir + 1.

        So a local-only message to k Maildirs costs 1 + k fsyncs, a remote-only one 4, both
        4 + k; the first delivery to a Maildir in a process adds the fsyncs of
        :meth:`MaildirStore.ensure`. ``tmp/`` is never fsync'd: a file lost there was never
        acknowledged.

        On any failure everything created is removed again, the spool file too, and the
        error raised (OSError as StorageFullError/StorageError). A reader fast enough to have
        moved a copy out of ``new/`` between steps 3 and a failure keeps it (the sender retries
        and it arrives twice: duplicates, never losses, as with any MTA).
        """
        if self._finished:
            raise StorageError(f"{self.queue_id}: spool file already committed or aborted")
        self._finished = True
        created: list[Path] = []
        try:
            self._edit()
            self._spill()
            if self._error is not None:
                raise self._error
            staged = self._stage_remote(envelope, created) if envelope.remote else None
            self._sync(staged)
            self._publish(envelope, created, staged)
        except BaseException as exc:
            durable.unlink_all(reversed(created))
            if isinstance(exc, OSError):
                raise storage_error(exc) from exc
            raise
        finally:
            self._discard()

    def _kept_spans(self) -> list[tuple[int, int]]:
        """The ``(start, end)`` content offsets of what stays, around the dropped ranges."""
        edges = [0, *itertools.chain.from_iterable(self._drops), self._written]
        return list(zip(edges[::2], edges[1::2], strict=True))

    def _edit(self) -> None:
        """At commit: the lines of :meth:`prepend` put in and the ranges of :meth:`drop` left
        out. A message still in memory is edited there and written in one piece as always."""
        if not (self._prepend or self._drops) or self._error is not None:
            return
        if self._file is None:
            head = self._header_size
            kept = (self._buffer[head + start:head + end] for start, end in self._kept_spans())
            self._buffer[head:] = b"".join((self._prepend, *kept))
        else:
            self._spill()
            self._rewrite()

    def _rewrite(self) -> None:
        """The file was spilled before lines were prepended or ranges dropped: write a new one
        next to it (the Return-Path line, the prepended lines, then the content copied from
        the old file, without the dropped ranges) and rename it over the old one. A crash
        leaves an extra file where unacknowledged files are cleaned up anyway (``tmp/``;
        ``messages/`` without envelope at start)."""
        assert self._file is not None
        if self._error is not None:
            return
        fresh_path = self._path.with_name(self._path.name + ".new")
        try:
            fresh = DurableFile(fresh_path)
            try:
                fresh.write(self._header + self._prepend)
                with open(self._path, "rb") as old:
                    for start, end in self._kept_spans():
                        old.seek(self._header_size + start)
                        self._copy(old, fresh, end - start)
                durable.rename(fresh_path, self._path)
                fresh.path = self._path  # so that a later failure's discard removes it by this name
            except BaseException:
                fresh.discard()
                raise
        except OSError as exc:
            self._error = exc
            self._discard()
            return
        self._file.close()
        self._file = fresh

    @staticmethod
    def _copy(source: BinaryIO, target: DurableFile, length: int) -> None:
        """``length`` octets from ``source`` to ``target``, a chunk of :data:`COPY_CHUNK` at a
        time (the message may be far larger than memory should hold)."""
        while length > 0:
            chunk = source.read(min(length, COPY_CHUNK))
            if not chunk:  # the spool file lost octets it was written with
                raise OSError(errno.EIO, "spool file shorter than written", str(target.path))
            target.write(chunk)
            length -= len(chunk)

    def abort(self) -> None:
        """Drop the message (transaction failed, client gone). Safe to call more than once."""
        if not self._finished:
            self._finished = True
            self._discard()

    def _sync(self, staged: Path | None) -> None:
        """Step 1 (and the fsyncs of step 2): the data, and with remote targets the staged
        envelope and ``messages/``, made durable in parallel. They are independent of each other
        and all must be done before anything becomes visible; run together they often share one
        journal commit, so a message waits for about one fsync here instead of three."""
        assert self._file is not None
        jobs: list[Callable[[], None]] = [self._file.sync]
        if staged is not None:
            jobs.append(functools.partial(durable.fsync_file, staged))
            jobs.append(functools.partial(self._spool.syncs.sync, self._spool.queue.messages))
        _run_together(jobs)
        self._file.close()

    def _publish(self, envelope: Envelope, created: list[Path], staged: Path | None) -> None:
        """Steps 2-5 of :meth:`commit`; every name made is appended to ``created`` (only once
        made: a name that already existed is not ours to remove)."""
        maildirs = self._spool.maildirs
        targets = list(dict.fromkeys(maildirs.maildir_path(t.address) for t in envelope.local))
        name = maildir_filename(self.queue_id, self._spool.hostname, self._header_size + self.size)
        for maildir in targets:
            maildirs.ensure(maildir)
            if maildir != self._home:
                created.append(maildirs.deliver(self._path, maildir, name))
        if self._home in targets:  # last: until now the file was invisible in tmp/
            final = self._home / "new" / name
            durable.rename(self._path, final)
            created.append(final)
        if staged is not None:
            marker = self._spool.queue.envelope_path(self.queue_id)
            durable.rename(staged, marker)
            created.append(marker)
        syncs = self._spool.syncs
        for maildir in targets:
            syncs.sync(maildir / "new")
        if staged is not None:
            syncs.sync(self._spool.queue.envelopes)
        self._kept = self._home in targets or self._home is None

    def _stage_remote(self, envelope: Envelope, created: list[Path]) -> Path:
        """Step 2: the queue's data file and staged envelope, durable but not yet visible."""
        queue = self._spool.queue
        data = queue.message_path(self.queue_id)
        if self._path != data:
            durable.link(self._path, data)
            created.append(data)
        entry = QueueEntry.from_envelope(envelope, body_offset=self._header_size, now=time.time())
        staged = queue.stage(entry, sync=False)  # fsync'd by _sync, with the data
        created.append(staged)
        return staged

    def _discard(self) -> None:
        """Close the file and, unless it was committed in place, remove it; on the error path,
        errors are not interesting."""
        self._buffer.clear()
        if self._file is None:
            return
        if self._kept:
            with contextlib.suppress(OSError):
                self._file.close()
        else:
            self._file.discard()
