"""The queue runner: delivers the outbound queue to the next hops, retries, expires and reports.

One runner per data directory (an exclusive lock, see :mod:`.lock`), on the event loop. Each
scan reads the queue's envelopes, takes every recipient that is due (:mod:`.schedule`: its next
attempt has come, or ETRN / ``taube queue flush`` / ``taube queue retry`` forced it) and groups
them by destination (:mod:`.routing`): the relayhost, a route of the transport table, or the
recipient's domain (MX lookup). Per destination up to ``max_connections_per_destination``
workers (and ``max_connections`` in total) each open one connection and send message after
message over it (:mod:`.attempt`), all recipients of a message at that destination in one
transaction (at most ``max_recipients_per_transaction``). What each attempt did is recorded in
the envelope before anything else happens (:mod:`.bookkeeping`).

A crash between an attempt and its record repeats the attempt (at-least-once: a recipient may
get a message twice, none is lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..config import ConfigError, Settings
from ..queue.spool import Spool
from ..queue.store import PENDING, QueueEntry, QueueStore
from .attempt import Connection, connect, transmit
from .bookkeeping import Bookkeeper
from .dns import Resolver
from .lock import RunnerLock, lock_path
from .outcome import Outcome, RouteFailure
from .reports import Reporter
from .requests import pending, request_path
from .routing import Route, Router, recipient_domain
from .schedule import due, merge_forced, scan_wait

__all__ = ["LOCK_POLL", "QueueRunner", "Route", "Router", "hand_to_loop"]

log = logging.getLogger("taube.delivery")

LOCK_POLL = 1.0  # seconds between looks at the runner lock while another runner holds it


@dataclass(slots=True)
class _Work:
    entry: QueueEntry  # as the scan found it: sender, parameters, recipients' DSN settings
    addresses: tuple[str, ...]

    @property
    def queue_id(self) -> str:
        return self.entry.queue_id


@dataclass(slots=True)
class _Destination:
    route: Route
    queue: deque[_Work] = field(default_factory=deque)
    workers: int = 0


class QueueRunner:
    """Delivers the queue; :meth:`run` until :meth:`stop`. Also the server's :class:`QueueControl`."""

    def __init__(self, *, settings: Settings, store: QueueStore, reporter: Reporter,
                 resolver: Resolver, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.resolver = resolver
        self.router = Router(settings)
        self.clock = clock
        self.bookkeeper = Bookkeeper(settings=settings, store=store, reporter=reporter,
                                     clock=clock, wake=self.wake)
        self.requests = request_path(settings.data_dir)
        self.requests.mkdir(parents=True, exist_ok=True)
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._inflight: dict[str, set[str]] = {}  # queue id -> recipients handed to a worker
        self._forced: dict[str, set[str] | None] = {}  # queue id -> recipients due now (None: all)
        self._destinations: dict[str, _Destination] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._full = True  # a full scan is wanted
        self._fresh: set[str] = set()  # committed since the last scan: look at these at least
        self._next_scan = 0.0  # when the next full scan is due (the earliest next_attempt)
        self.lock = RunnerLock(lock_path(settings.data_dir))  # one runner per data directory

    @classmethod
    def for_spool(cls, settings: Settings, spool: Spool, reporter: Reporter) -> QueueRunner:
        """The runner of ``spool``'s queue, with a resolver as ``[dns]`` says."""
        return cls(settings=settings, store=spool.queue, reporter=reporter,
                   resolver=Resolver(settings.dns.nameservers, settings.dns.timeout))

    def reconfigure(self, settings: Settings) -> None:
        """SIGHUP: new routes, limits and schedule for what is dispatched from now on."""
        try:
            router = Router(settings)
        except ConfigError as e:
            log.error("reload: keeping the previous delivery routes: %s", e)
            return
        self.settings = self.bookkeeper.settings = settings
        self.router = router

    # --- control -----------------------------------------------------------------------------
    def wake(self, queue_id: str | None = None) -> None:
        """Look at the queue now. With ``queue_id`` (a message just committed): only at that
        entry, without listing the whole queue; without: a full scan (flush, requests).
        Safe from any thread: from another one it is passed to the runner's event loop."""
        if hand_to_loop(self._loop, self.wake, queue_id):
            return
        if queue_id is None:
            self._full = True
        else:
            self._fresh.add(queue_id)
        if self._wake is not None:
            self._wake.set()

    def flush(self, domain: str | None, *, subdomains: bool = False) -> int:
        """ETRN and ``taube queue flush``: every pending recipient in ``domain`` is due now."""
        count = 0
        domain = domain.lower().rstrip(".") if domain else None
        for entry in self.store.list():
            wanted = entry.waiting_for(domain, subdomains)
            if wanted:
                self._force(entry.queue_id, wanted)
                count += 1
        if count:
            log.info("flush %s: %d message(s) due now", domain or "(all)", count)
            self.wake()
        return count

    def retry(self, queue_id: str) -> bool:
        """``taube queue retry ID``: every pending recipient of that message is due now."""
        try:
            entry = self.store.load(queue_id)
        except (FileNotFoundError, ValueError):
            return False
        self._force(queue_id, None if any(r.status in PENDING for r in entry.recipients) else set())
        self.wake()
        return True

    def _force(self, queue_id: str, addresses: set[str] | None) -> None:
        self._forced[queue_id] = merge_forced(self._forced.get(queue_id, set()), addresses)

    def _take_requests(self) -> None:
        """Apply the CLI's request files (flush, retry); they are removed as they are taken."""
        for name, request in pending(self.requests):
            action = request.get("action")
            try:
                if action == "flush":
                    domain = request.get("domain")
                    self.flush(str(domain) if domain else None, subdomains=bool(request.get("subdomains")))
                elif action == "retry":
                    if not self.retry(str(request.get("id"))):
                        log.info("retry %s: no such queue entry", request.get("id"))
                else:
                    log.warning("queue request %s: unknown action %r", name, action)
            except (ValueError, OSError) as e:
                log.warning("queue request %s ignored: %s", name, e)

    # --- main loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(self.settings.delivery.max_connections)
        if not await self._take_lock():
            return
        try:
            log.info("queue runner started")
            await self._run()
        finally:
            await self._cancel_workers()  # no delivery may outlive the lock
            self.lock.release()

    async def _take_lock(self) -> bool:
        """Wait until this runner holds the runner lock (False: stopped before it did). The
        holder is polled every :data:`LOCK_POLL` seconds; :meth:`stop` ends the wait at once."""
        assert self._wake is not None
        try:
            if self.lock.try_acquire():
                return True
            holder = self.lock.holder()
            log.warning("queue runner: waiting for %s, held by another queue runner%s; not "
                        "delivering until it stops", self.lock.path,
                        f" (pid {holder})" if holder else "")
        except OSError as e:  # the lock file cannot even be made (a full disk on a first start)
            log.error("queue runner: cannot open %s, trying again: %s", self.lock.path, e)
        while not self._stopping:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LOCK_POLL):
                    await self._wake.wait()
            if not self._stopping and self._try_lock():
                log.info("queue runner: got %s", self.lock.path)
                return True
        return False

    def _try_lock(self) -> bool:
        try:
            return self.lock.try_acquire()
        except OSError:
            return False

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            self._wake.clear()
            interval = self.settings.queue.scan_interval
            try:
                if self._full or self.clock() >= self._next_scan:
                    self._full = False
                    self._fresh.clear()
                    next_due = await self._scan()
                    self._next_scan = min(next_due, self.clock() + interval)
                elif self._fresh:
                    fresh, self._fresh = self._fresh, set()
                    await self._scan(fresh)
            except Exception:
                log.exception("queue scan failed")
                self._next_scan = self.clock() + interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(scan_wait(self._next_scan, self.clock(), interval)):
                    await self._wake.wait()

    async def stop(self) -> None:
        """Stop scanning and cancel the workers; an interrupted attempt is repeated later."""
        self._stopping = True
        self.wake()
        await self._cancel_workers()

    async def _cancel_workers(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _scan(self, only: set[str] | None = None) -> float:
        """Dispatch every due recipient (of the entries ``only``, or of the whole queue); the
        time the next one falls due."""
        loop = asyncio.get_running_loop()
        if only is not None:
            entries = await loop.run_in_executor(None, self._load_some, sorted(only))
        else:
            self._take_requests()  # a few small files, on the loop: flush() is not thread-safe
            entries = await loop.run_in_executor(None, self.store.list)
            queued = {entry.queue_id for entry in entries}
            for queue_id in [q for q, lock in self._locks.items() if q not in queued and not lock.locked()]:
                del self._locks[queue_id]
        now = self.clock()
        next_due = now + self.settings.queue.scan_interval
        limit = self.settings.delivery.max_recipients_per_transaction
        if only is None:
            forced, self._forced = self._forced, {}
        else:
            forced = {q: self._forced.pop(q) for q in list(self._forced) if q in only}
        for entry in entries:
            found = due(entry.recipients, now, forced.get(entry.queue_id, set()),
                        self._inflight.get(entry.queue_id, ()))
            if found.next_due is not None:
                next_due = min(next_due, found.next_due)
            by_route: dict[str, tuple[Route, list[str]]] = {}
            for address in found.addresses:
                route = self.router.route(recipient_domain(address))
                by_route.setdefault(route.key, (route, []))[1].append(address)
            for route, addresses in by_route.values():
                for i in range(0, len(addresses), limit):
                    chunk = tuple(addresses[i:i + limit])
                    self._inflight.setdefault(entry.queue_id, set()).update(chunk)
                    self._enqueue(route, _Work(entry, chunk))
        return next_due

    def _load_some(self, queue_ids: list[str]) -> list[QueueEntry]:
        entries = []
        for queue_id in queue_ids:
            try:
                entries.append(self.store.load(queue_id))
            except (FileNotFoundError, ValueError, TypeError, KeyError):
                continue  # gone already (delivered, local only) or damaged: the full scan logs it
        return entries

    def _enqueue(self, route: Route, work: _Work) -> None:
        dest = self._destinations.get(route.key)
        if dest is None:
            dest = self._destinations[route.key] = _Destination(route)
        dest.queue.append(work)
        self._staff(dest)

    def _staff(self, dest: _Destination) -> None:
        """Start workers for ``dest`` while it has more waiting work than workers, up to the
        per-destination limit."""
        per_destination = self.settings.delivery.max_connections_per_destination
        while not self._stopping and dest.workers < per_destination and dest.workers < len(dest.queue):
            dest.workers += 1
            task = asyncio.create_task(self._worker(dest), name=f"deliver {dest.route.key}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # --- a worker: one connection at a time to one destination ------------------------------
    async def _worker(self, dest: _Destination) -> None:
        try:
            await self._work(dest)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug must not strand mail: what this destination still had waits for the next scan.
            log.exception("delivery to %s failed unexpectedly; its messages are retried later",
                          dest.route.key)
            while dest.queue:
                self._release(dest.queue.popleft())
        finally:
            dest.workers -= 1
            if dest.queue:
                self._staff(dest)  # work that came in while this worker was finishing
            if not dest.queue and dest.workers == 0:
                self._destinations.pop(dest.route.key, None)

    async def _work(self, dest: _Destination) -> None:
        assert self._slots is not None
        async with self._slots:
            while dest.queue and not self._stopping:
                try:
                    hosts = await self.router.hosts(dest.route, self.resolver)
                    connection = await connect(dest.route, hosts, helo=self.settings.hostname,
                                               delivery=self.settings.delivery)
                except RouteFailure as failure:
                    # The destination is unreachable now: everything waiting for it shares
                    # the failure (as Postfix's "dead destination"), each recorded once.
                    while dest.queue:
                        work = dest.queue.popleft()
                        await self._record(work, dict.fromkeys(work.addresses, failure.outcome))
                    break
                try:
                    while dest.queue and not self._stopping:
                        work = dest.queue.popleft()
                        try:
                            usable = await self._deliver(connection, work)
                        except BaseException:
                            self._release(work)
                            raise
                        if not usable:
                            break  # the connection is gone: open a new one for the rest
                finally:
                    await connection.conn.close()

    async def _deliver(self, connection: Connection, work: _Work) -> bool:
        """One transaction for ``work``; False if the connection can no longer be used."""
        sent = await transmit(connection, work.entry, work.addresses, self.store)
        if sent is None:  # nothing left to send
            self._release(work)
            return True
        await self._record(work, sent.outcomes, dsn_passed=sent.dsn_passed)
        return sent.usable

    def _release(self, work: _Work) -> None:
        """``work``'s recipients are no longer being delivered (a scan may take them again)."""
        busy = self._inflight.get(work.queue_id)
        if busy is not None:
            busy.difference_update(work.addresses)
            if not busy:
                del self._inflight[work.queue_id]

    async def _record(self, work: _Work, outcomes: Mapping[str, Outcome], *,
                      dsn_passed: bool = False) -> None:
        """Apply an attempt in a worker thread, one record per message at a time."""
        lock = self._locks.setdefault(work.queue_id, asyncio.Lock())
        try:
            async with lock:
                await asyncio.get_running_loop().run_in_executor(
                    None, self.bookkeeper.apply, work.queue_id, outcomes, dsn_passed, work.entry)
        except Exception:
            log.exception("%s: recording the delivery attempt failed; it will be repeated",
                          work.queue_id)
        finally:
            self._release(work)


def hand_to_loop(loop: asyncio.AbstractEventLoop | None, callback: Callable[..., object],
                 *args: object) -> bool:
    """From a thread other than ``loop``'s: schedule ``callback(*args)`` on ``loop`` and return
    True (the caller returns at once). On the loop's own thread, or before there is a loop:
    False, the caller goes on. A closed loop (shutting down) drops the call."""
    if loop is None:
        return False
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        return False
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)
    return True
