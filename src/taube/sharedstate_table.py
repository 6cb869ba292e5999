"""SharedState across worker processes: a table in one file that every process maps
(:mod:`taube.sharedstate_layout`), changed under one lock; mailbox locks are flocks
(:mod:`taube.sharedstate_locks`).

Locking. Every operation holds an exclusive ``flock(2)`` on the table file for a few
microseconds (two system calls). The kernel drops a flock when its holder dies however it dies,
so a worker killed inside an operation never wedges the others, where a semaphore or a lock word
in the shared memory would stay taken. A flock belongs to the open file description: each handle
opens the file itself, and a child forked from a process with a handle reopens it
(:meth:`SharedTable._forked`), or parent and child would hold one lock between them and exclude
nothing. A thread lock orders the threads of one process that share a handle.

Crash safety. Every change is a few writes, ordered so that a process killed between any two
leaves a table the others can go on with: a new slot's fingerprint is cleared before its key is
written and set after it; a connection is added to its client's count before the service total
(a kill in between counts it in one only, until its worker's share is cleared). A connection
slot whose counts are all zero is free: one left with a fingerprint by a kill is taken again when
its buckets are full, and cleared by :meth:`SharedTable.release_worker`.

Worker ids. Connections are counted per worker (one count per worker id in every slot), so that
the share of a worker that died with connections open can be taken back: by
:meth:`SharedTable.release_worker` (the supervisor, after reaping it) and by the next process
that opens the table with its id. A live process holds its id with a flock on
``<table>.worker-<id>.lock`` for as long as its handle is open, so that no two live processes
count under one id and a dead one's id is known to be free.

Full tables. A connection slot is never evicted (a lost count would lift a limit): a
(service, client) pair that finds both its buckets full is refused with "too many connections",
except exempt clients (``per_client_limit`` None), which are then counted in the service total
only. Failed logins and POP3 logins are a cache: a new address takes the place of the one in its
bucket whose last event is oldest. An address has at most ``ring`` failures remembered; a
``limit`` above that blocks at ``ring``.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from .sharedstate_layout import (COUNT, FPS, HEAD, KEY, MAX_SERVICES, SERVICE, SERVICES_AT, TIME,
                                 TIMES, fingerprint, pack_key, read_layout)
from .sharedstate_locks import MailboxLocks, try_lock_file

__all__ = ["SharedTable", "WorkerIdInUse"]

log = logging.getLogger("taube.sharedstate")

TOO_MANY = "too many connections"
TOO_MANY_FROM = "too many connections from your address"
FULL = -1  # no connection slot to be had
CLIENT_SLOTS = FPS.size + TIMES.size  # where the slots of a failed or POP3 login bucket start
FP = struct.Struct("<Q")
KEY_CACHE = 4096  # client addresses whose slot keys a handle remembers (open, then close)


class WorkerIdInUse(RuntimeError):
    """A live process holds this worker id on the table."""


class SharedTable:
    """One process's handle on the table at ``path`` (made by
    :func:`~taube.sharedstate_layout.create_table`). ``worker_id``: the column this process
    counts its connections in, None for a handle that opens none (the supervisor's). ``clock``:
    wall-clock seconds, the same in every process."""

    def __init__(self, path: Path, *, worker_id: int | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.worker_id = worker_id
        self._clock = clock
        self._mutex = threading.Lock()
        self._worker_fd: int | None = None
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            self._mm = mmap.mmap(self._fd, 0)
            layout, self._hash_key = read_layout(self._mm, path)
            if len(self._mm) < layout.size:
                raise ValueError(f"{path}: truncated shared state table")
            if worker_id is not None:
                if not 0 <= worker_id < layout.workers:
                    raise ValueError(f"worker id {worker_id} outside the table's 0..{layout.workers - 1}")
                self._worker_fd = _take_worker_id(path, worker_id)
        except BaseException:
            self._close_files()
            raise
        self._layout = layout
        self._all_totals = struct.Struct(f"<{MAX_SERVICES * layout.workers}I")
        self._conn_rest = bytes(layout.conn_slot - KEY.size)
        self._fail_rest = bytes(layout.fail_slot - KEY.size)
        self._services: dict[str, int] = {}
        self._keys: dict[tuple[int, str], tuple[bytes, int, int, int]] = {}
        # (service, client) -> [slot offset (FULL: counted in the total only), connections]
        # of the connections open through this handle: close needs no lookup in the table
        self._mine: dict[tuple[int, str], list[int]] = {}
        self._mailboxes = MailboxLocks(path.parent / "mailbox-locks")
        _open_tables.add(self)
        if worker_id is not None:  # a predecessor with this id died: its share goes
            self._acquire()
            try:
                self._clear_worker(worker_id)
            finally:
                self._release()

    # --- connections -------------------------------------------------------------------
    def open_connection(self, client: str, *, total_limit: int, per_client_limit: int | None,
                        service: str = "") -> str | None:
        column = self._column()
        index = self._services.get(service)
        if index is None:
            index = self._service(service)
        pair = (index, client)
        counts, mm = self._layout.counts, self._mm
        total_at = self._layout.total_at(index)
        self._acquire()
        try:
            mine = self._mine.get(pair)
            if sum(counts.unpack_from(mm, total_at)) >= total_limit:
                return TOO_MANY
            if per_client_limit is not None and per_client_limit <= 0:
                return TOO_MANY_FROM
            slot = mine[0] if mine is not None else self._conn_slot(index, client)
            if slot >= 0:
                if (per_client_limit is not None
                        and sum(counts.unpack_from(mm, slot + KEY.size)) >= per_client_limit):
                    return TOO_MANY_FROM  # (never a slot claimed just now: it counts 0 < limit)
                _add(mm, slot + KEY.size + column, 1)
            if slot >= 0 or per_client_limit is None:  # no room: an exempt client in the total only
                _add(mm, total_at + column, 1)
                if mine is None:
                    self._mine[pair] = [slot, 1]
                else:
                    mine[1] += 1
                return None
        finally:
            self._release()
        # no room to count it, so no way to know it is within its limit: refused
        log.warning("%s: no free slot for service=%r client=%s: refused", self.path, service, client)
        return TOO_MANY

    def close_connection(self, client: str, *, service: str = "") -> None:
        column = self._column()
        index = self._services.get(service)
        if index is None:
            index = self._service(service)
        pair = (index, client)
        counts, mm = self._layout.counts, self._mm
        self._acquire()
        try:
            mine = self._mine.get(pair)
            if mine is None:  # not opened through this handle
                return
            slot = mine[0]
            mine[1] -= 1
            if not mine[1]:
                del self._mine[pair]
            _add(mm, self._layout.total_at(index) + column, -1)
            if slot >= 0:
                _add(mm, slot + KEY.size + column, -1)
                if not mine[1] and not any(counts.unpack_from(mm, slot + KEY.size)):
                    self._free_conn(slot)
        finally:
            self._release()

    def connection_count(self) -> int:
        self._acquire()
        try:
            return sum(self._all_totals.unpack_from(self._mm, self._layout.totals_at))
        finally:
            self._release()

    def release_worker(self, worker_id: int) -> None:
        """Take back the connections still counted for ``worker_id``, whose process is gone (the
        supervisor calls this when it reaps a worker; a new process opening the table with the
        id does it too). Raises :class:`WorkerIdInUse` while a live process holds the id."""
        if not 0 <= worker_id < self._layout.workers:
            raise ValueError(f"worker id {worker_id} outside the table's 0..{self._layout.workers - 1}")
        if worker_id == self.worker_id:
            raise WorkerIdInUse(f"worker id {worker_id} is this handle's own")
        fd = _take_worker_id(self.path, worker_id)  # held while clearing: no one takes the id meanwhile
        try:
            self._acquire()
            try:
                self._clear_worker(worker_id)
            finally:
                self._release()
        finally:
            os.close(fd)

    # --- failed logins -------------------------------------------------------------------
    def now(self) -> float:
        return self._clock()

    def auth_failed(self, client: str, window: float) -> int:
        layout, mm = self._layout, self._mm
        key, fp, base = self._bucket(client, layout.fail_at, layout.fail_bucket)
        slots_at = base + CLIENT_SLOTS
        self._acquire()
        try:
            now = self._clock()
            i = self._find(base, slots_at, layout.fail_slot, key, fp)
            if i < 0:
                i = self._claim_stalest(base, slots_at, layout.fail_slot, key, fp, self._fail_rest)
            head_at = slots_at + i * layout.fail_slot + KEY.size
            head = HEAD.unpack_from(mm, head_at)[0]
            TIME.pack_into(mm, head_at + HEAD.size + 8 * (head % layout.ring), now)
            HEAD.pack_into(mm, head_at, head + 1)
            TIME.pack_into(mm, base + FPS.size + 8 * i, now)  # the bucket's eviction order
            return self._failures_at(head_at, now - window)
        finally:
            self._release()

    def auth_failures(self, client: str, window: float) -> int:
        layout = self._layout
        key, fp, base = self._bucket(client, layout.fail_at, layout.fail_bucket)
        slots_at = base + CLIENT_SLOTS
        self._acquire()
        try:
            i = self._find(base, slots_at, layout.fail_slot, key, fp)
            if i < 0:
                return 0
            return self._failures_at(slots_at + i * layout.fail_slot + KEY.size, self._clock() - window)
        finally:
            self._release()

    def auth_blocked(self, client: str, window: float, limit: int) -> bool:
        return self.auth_failures(client, window) >= min(limit, self._layout.ring)

    def auth_succeeded(self, client: str) -> None:
        layout = self._layout
        key, fp, base = self._bucket(client, layout.fail_at, layout.fail_bucket)
        self._acquire()
        try:
            i = self._find(base, base + CLIENT_SLOTS, layout.fail_slot, key, fp)
            if i >= 0:
                FP.pack_into(self._mm, base + 8 * i, 0)
        finally:
            self._release()

    def _failures_at(self, head_at: int, cutoff: float) -> int:
        """(lock held) Failures after ``cutoff`` in the ring whose head is at ``head_at``."""
        head = HEAD.unpack_from(self._mm, head_at)[0]
        times = self._layout.times.unpack_from(self._mm, head_at + HEAD.size)
        if head < len(times):
            times = times[:head]
        return sum(map(float(cutoff).__lt__, times))  # the times after cutoff, counted in C

    # --- mailbox locks and SMTP-after-POP -----------------------------------------------------
    def lock_mailbox(self, mailbox: str) -> bool:
        return self._mailboxes.lock(mailbox)

    def unlock_mailbox(self, mailbox: str) -> None:
        self._mailboxes.unlock(mailbox)

    def pop_login(self, client: str) -> None:
        layout = self._layout
        key, fp, base = self._bucket(client, layout.pop_at, layout.pop_bucket)
        slots_at = base + CLIENT_SLOTS
        self._acquire()
        try:
            i = self._find(base, slots_at, KEY.size, key, fp)
            if i < 0:
                i = self._claim_stalest(base, slots_at, KEY.size, key, fp, b"")
            TIME.pack_into(self._mm, base + FPS.size + 8 * i, self._clock())
        finally:
            self._release()

    def pop_login_within(self, client: str, window: float) -> bool:
        layout = self._layout
        key, fp, base = self._bucket(client, layout.pop_at, layout.pop_bucket)
        self._acquire()
        try:
            i = self._find(base, base + CLIENT_SLOTS, KEY.size, key, fp)
            return i >= 0 and self._clock() - TIME.unpack_from(self._mm, base + FPS.size + 8 * i)[0] < window
        finally:
            self._release()

    # --- life cycle ---------------------------------------------------------------------
    def close(self) -> None:
        """Unmap the table, release this handle's mailbox locks and its worker id (the
        connections it still counts stay counted until the id is released or reopened)."""
        if self._mm.closed:
            return
        _open_tables.discard(self)
        self._mailboxes.close()
        self._mm.close()
        self._close_files()

    def _close_files(self) -> None:
        for fd in (self._fd, self._worker_fd):
            if fd is not None:
                os.close(fd)
        self._worker_fd = None

    def _forked(self) -> None:
        """In a child forked from a process with this handle: a lock of its own (a new open of
        the same file, whatever is at the path now), no worker id (the parent's stays the
        parent's: the child may read and record logins, not count connections)."""
        self._mutex = threading.Lock()  # another thread of the parent may have held it
        inherited, self._fd = self._fd, _reopen(self._fd, self.path)
        os.close(inherited)  # releases nothing: the parent keeps its description open
        if self._worker_fd is not None:
            os.close(self._worker_fd)
            self._worker_fd = None
        self.worker_id = None
        self._mine.clear()

    # --- slots --------------------------------------------------------------------------
    def _acquire(self) -> None:
        self._mutex.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._mutex.release()
            raise

    def _release(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()

    def _column(self) -> int:
        if self.worker_id is None:
            raise RuntimeError("this handle has no worker id: open the table with open_shared()")
        return 4 * self.worker_id

    def _service(self, name: str) -> int:
        index = self._services.get(name)
        if index is None:
            index = self._services[name] = self._register(name)
        return index

    def _register(self, name: str) -> int:
        """The index of service ``name`` in the table, added if new (the list only grows, so
        every process may keep the indexes it learnt)."""
        entry = b"=" + name.encode("utf-8")  # "=": an empty name is not an empty entry
        if len(entry) >= SERVICE.size:
            raise ValueError(f"service name too long: {name!r}")
        self._acquire()
        try:
            for index in range(MAX_SERVICES):
                at = SERVICES_AT + index * SERVICE.size
                stored = SERVICE.unpack_from(self._mm, at)[0]
                if stored == entry:
                    return index
                if not stored:
                    SERVICE.pack_into(self._mm, at, entry)
                    return index
        finally:
            self._release()
        raise ValueError(f"more than {MAX_SERVICES} services")

    def _conn_key(self, service: int, client: str) -> tuple[bytes, int, int, int]:
        cached = self._keys.get((service, client))
        if cached is None:
            if len(self._keys) >= KEY_CACHE:
                self._keys.clear()
            key = pack_key(client, bytes((service,)))
            cached = self._keys[(service, client)] = (
                key, *fingerprint(key, self._hash_key, self._layout.conn_buckets))
        return cached

    def _bucket(self, client: str, region: int, bucket_size: int) -> tuple[bytes, int, int]:
        """``client``'s slot key, fingerprint and bucket in the region (failed logins or POP3
        logins) at ``region``: one bucket only, as these tables forget rather than refuse."""
        cached = self._keys.get((-1, client))
        if cached is None:
            if len(self._keys) >= KEY_CACHE:
                self._keys.clear()
            key = pack_key(client)
            cached = self._keys[(-1, client)] = (
                key, *fingerprint(key, self._hash_key, self._layout.client_buckets))
        return cached[0], cached[1], region + cached[2] * bucket_size

    def _find(self, base: int, slots_at: int, slot_size: int, key: bytes, fp: int) -> int:
        """(lock held) The index of ``key``'s slot in the bucket at ``base``, or -1."""
        fps = FPS.unpack_from(self._mm, base)
        return self._match(fps, slots_at, slot_size, key, fp) if fp in fps else -1

    def _match(self, fps: tuple[int, ...], slots_at: int, slot_size: int, key: bytes, fp: int) -> int:
        """(lock held) The index of the slot among ``fps`` (a bucket's fingerprints, ``fp`` one
        of them) that holds ``key``, or -1: equal fingerprints are checked against the key."""
        i = fps.index(fp)
        while True:
            at = slots_at + i * slot_size
            if self._mm[at:at + KEY.size] == key:
                return i
            try:
                i = fps.index(fp, i + 1)
            except ValueError:
                return -1

    def _conn_slot(self, service: int, client: str) -> int:
        """(lock held) The offset of the connection slot of (``service``, ``client``), taken
        in the emptier of its two buckets if it has none; FULL when both are full."""
        key, fp, first, second = self._conn_key(service, client)
        layout, mm = self._layout, self._mm
        best: tuple[int, int, int] | None = None  # free slots, bucket base, index
        for bucket in (first, second) if first != second else (first,):
            base = layout.conn_at + bucket * layout.conn_bucket
            fps = FPS.unpack_from(mm, base)
            if fp in fps:
                i = self._match(fps, base + FPS.size, layout.conn_slot, key, fp)
                if i >= 0:
                    return base + FPS.size + i * layout.conn_slot
            free = fps.count(0)
            if free and (best is None or free > best[0]):
                best = (free, base, fps.index(0))
            elif not free and best is None:
                stale = self._stale_conn(base, fps)
                if stale >= 0:
                    best = (0, base, stale)
        if best is None:
            return FULL
        _, base, i = best
        self._write_slot(base, base + FPS.size, layout.conn_slot, i, key, fp, self._conn_rest)
        return base + FPS.size + i * layout.conn_slot

    def _stale_conn(self, base: int, fps: tuple[int, ...]) -> int:
        """(lock held) A slot of the full bucket at ``base`` counting nothing (left so by a
        process killed between its writes), or -1."""
        layout = self._layout
        for i in range(len(fps)):
            at = base + FPS.size + i * layout.conn_slot + KEY.size
            if not any(layout.counts.unpack_from(self._mm, at)):
                return i
        return -1

    def _free_conn(self, slot: int) -> None:
        """(lock held) Mark the connection slot at offset ``slot`` free."""
        layout = self._layout
        bucket = (slot - layout.conn_at) // layout.conn_bucket
        base = layout.conn_at + bucket * layout.conn_bucket
        FP.pack_into(self._mm, base + 8 * ((slot - base - FPS.size) // layout.conn_slot), 0)

    def _claim_stalest(self, base: int, slots_at: int, slot_size: int, key: bytes, fp: int,
                       rest: bytes) -> int:
        """(lock held) A slot for ``key`` in the bucket at ``base``: a free one, else the one
        whose last event is the oldest (its address is forgotten)."""
        fps = FPS.unpack_from(self._mm, base)
        if 0 in fps:
            i = fps.index(0)
        else:
            times = TIMES.unpack_from(self._mm, base + FPS.size)
            i = times.index(min(times))
        self._write_slot(base, slots_at, slot_size, i, key, fp, rest)
        return i

    def _write_slot(self, base: int, slots_at: int, slot_size: int, i: int, key: bytes, fp: int,
                    rest: bytes) -> None:
        """(lock held) Give slot ``i`` of the bucket at ``base`` to ``key``, the rest of the
        slot zeroed; free while it is written, so that a kill halfway leaves a free slot."""
        FP.pack_into(self._mm, base + 8 * i, 0)
        at = slots_at + i * slot_size
        self._mm[at:at + slot_size] = key + rest
        FP.pack_into(self._mm, base + 8 * i, fp)

    def _clear_worker(self, worker_id: int) -> None:
        """(lock held) Zero ``worker_id``'s counts everywhere; free the slots left counting
        nothing."""
        layout, mm = self._layout, self._mm
        column = 4 * worker_id
        for index in range(MAX_SERVICES):
            COUNT.pack_into(mm, layout.total_at(index) + column, 0)
        for bucket in range(layout.conn_buckets):
            base = layout.conn_at + bucket * layout.conn_bucket
            fps = FPS.unpack_from(mm, base)
            if not any(fps):
                continue
            for i, fp in enumerate(fps):
                if fp:
                    counts_at = base + FPS.size + i * layout.conn_slot + KEY.size
                    COUNT.pack_into(mm, counts_at + column, 0)
                    if not any(layout.counts.unpack_from(mm, counts_at)):
                        FP.pack_into(mm, base + 8 * i, 0)


def _add(mm: mmap.mmap, at: int, delta: int) -> bool:
    """Add ``delta`` to the count at ``at``, never below zero; False if it was zero already
    (a count taken back by release_worker while the connection was open)."""
    value = COUNT.unpack_from(mm, at)[0] + delta
    if value < 0:
        return False
    COUNT.pack_into(mm, at, value)
    return True


def _take_worker_id(path: Path, worker_id: int) -> int:
    """A descriptor holding the flock of ``worker_id`` on the table at ``path``."""
    fd = try_lock_file(path.with_name(f"{path.name}.worker-{worker_id}.lock"))
    if fd is None:
        raise WorkerIdInUse(f"worker id {worker_id} is held by a live process")
    return fd


def _reopen(fd: int, path: Path) -> int:
    """A new open file description of the file open as ``fd`` (through /proc: the path may
    name a newer table by now), or of ``path`` where there is no /proc."""
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)


_open_tables: weakref.WeakSet[SharedTable] = weakref.WeakSet()


def _after_fork() -> None:
    for table in list(_open_tables):
        table._forked()


os.register_at_fork(after_in_child=_after_fork)
