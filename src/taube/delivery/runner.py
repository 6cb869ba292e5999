"""The queue runner: delivers the outbound queue to the next hops, retries, expires and reports.

One runner per data directory (an exclusive lock, see :mod:`.lock`), on the event loop. Each
scan reads the queue's envelopes, takes every recipient that is due (``next_attempt`` passed, or
forced by ETRN / ``taube queue flush`` / ``taube queue retry``) and groups them by destination:
the relayhost, a route of the transport table, or the recipient's domain (MX lookup). Per
destination up to ``max_connections_per_destination`` workers (and ``max_connections`` in total)
each open one connection and send message after message over it, all recipients of a message at
that destination in one transaction (at most ``max_recipients_per_transaction``).

Outcome per recipient, recorded in its envelope before anything else happens:

- 2xx after DATA: ``delivered`` (a ``relayed`` report if NOTIFY=SUCCESS was asked for and the
  next hop does not speak DSN; if it does, the parameters went along and it reports);
- 5xx, NXDOMAIN, null MX, a mail loop: ``bounced`` with a ``failed`` report to the sender;
- 4xx, no connection, DNS trouble, a connection lost mid-transaction: ``deferred`` until
  ``next_attempt`` (the ``[queue] backoff`` schedule), with a ``delayed`` report once the
  message is older than ``[queue] delay_warning``; once older than ``[queue] lifetime``:
  ``bounced`` as above.

A message leaves the queue only when every recipient is final, and only after its reports are
committed. A crash in between repeats the last attempt (at-least-once: a recipient may get a
message twice, none is lost). A report that cannot be committed (a full disk) leaves the
recipients it is about pending, retried on the backoff schedule, so that their report is tried
again rather than lost; recipients delivered in the same attempt are recorded as delivered. Mail
from ``<>`` is never reported to its sender: its failure goes to the postmaster (``[delivery]
null_sender_failures``) or only to the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from ..config import ConfigError, Settings, parse_listen, parse_next_hop
from ..queue.bounce import RecipientReport, single_line
from ..queue.spool import FINAL, PENDING, QueuedRecipient, QueueEntry, QueueStore, Spool
from ..store.durable import StorageError
from .client import OutboundConnection, OutRecipient, SMTPClientError, TransactionResult
from .dns import DNSFailure, MXHost, Resolver, is_ip_literal
from .lock import RunnerLock, lock_path
from .reports import NOTICE_PARAM, Reporter, original_recipient, wants
from .requests import pending, request_path

__all__ = ["FINAL", "PENDING", "QueueRunner", "Route", "Router", "hand_to_loop", "request_path"]

log = logging.getLogger("taube.delivery")

LOCK_POLL = 1.0  # seconds between looks at the runner lock while another runner holds it


# --- routing ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Route:
    """Where mail for a domain goes. ``key`` names the destination (concurrency, logs)."""

    key: str
    host: str
    port: int
    mx: bool  # look up MX records of ``host`` (a mail domain); else contact ``host`` itself
    tls: Literal["none", "may", "encrypt"]
    auth: tuple[str, str] | None = None


class Router:
    """The transport table, then the relayhost, then MX lookup of the recipient's domain."""

    def __init__(self, settings: Settings) -> None:
        d = settings.delivery
        self.port = d.port
        self.tls = d.tls
        self.transport = {k: parse_next_hop(v, d.port) for k, v in d.transport.items()}
        self.relayhost = parse_next_hop(d.relayhost, d.port) if d.relayhost else None
        self.relayhost_tls = d.relayhost_tls
        self.auth: tuple[str, str] | None = None
        if d.relayhost_user is not None and d.relayhost_password_file is not None:
            try:
                password = d.relayhost_password_file.read_text(encoding="utf-8").strip("\r\n")
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"[delivery] relayhost_password_file: cannot read "
                                  f"{d.relayhost_password_file}: {e}") from None
            if not password:
                raise ConfigError(f"[delivery] relayhost_password_file: {d.relayhost_password_file} is empty")
            with contextlib.suppress(OSError):
                if d.relayhost_password_file.stat().st_mode & 0o077:
                    log.warning("%s can be read by other users than its owner: chmod 600 it",
                                d.relayhost_password_file)
            self.auth = (d.relayhost_user, password)

    def route(self, domain: str) -> Route:
        domain = domain.lower().rstrip(".")
        hop = self.transport.get(domain)
        if hop is None:
            parts = domain.split(".")
            for i in range(1, len(parts)):
                hop = self.transport.get("." + ".".join(parts[i:]))
                if hop is not None:
                    break
        if hop is not None:
            host, port, mx = hop
            return Route(key=_hop_name(host, port, mx), host=host, port=port, mx=mx, tls=self.tls)
        if self.relayhost is not None:
            host, port, mx = self.relayhost
            tls = self.relayhost_tls if self.relayhost_tls == "encrypt" else "may"
            return Route(key=_hop_name(host, port, mx), host=host, port=port, mx=mx, tls=tls,
                         auth=self.auth)
        return Route(key=domain, host=domain, port=self.port, mx=True, tls=self.tls)


def _hop_name(host: str, port: int, mx: bool) -> str:
    return f"{host}:{port}" if mx else f"[{host}]:{port}"


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


# --- outcomes --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one attempt did for one recipient."""

    kind: Literal["sent", "deferred", "bounced"]
    status: str  # RFC 3463
    text: str  # for the log and last_error: the reply or the problem
    diagnostic: str | None  # DSN Diagnostic-Code, "smtp; 550 5.1.1 ..." (None: text as X-Taube)
    remote_mta: str | None
    relay: str  # "mx.example.org[192.0.2.1]:25" or "none"


class _RouteFailure(Exception):
    """No transaction was possible for this destination now: DNS or every host failed."""

    def __init__(self, *, temporary: bool, status: str, text: str, diagnostic: str | None = None,
                 remote_mta: str | None = None, relay: str = "none") -> None:
        super().__init__(text)
        self.outcome = _Outcome(kind="deferred" if temporary else "bounced", status=status,
                                text=text, diagnostic=diagnostic, remote_mta=remote_mta, relay=relay)


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


@dataclass(slots=True)
class _Connection:
    conn: OutboundConnection
    relay: str
    remote_mta: str


# --- the runner ------------------------------------------------------------------------------
class QueueRunner:
    """Delivers the queue; :meth:`run` until :meth:`stop`. Also the server's :class:`QueueControl`."""

    def __init__(self, *, settings: Settings, store: QueueStore, reporter: Reporter,
                 resolver: Resolver, clock: Callable[[], float] = time.time,
                 server_alive: Callable[[], bool] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.reporter = reporter
        self.resolver = resolver
        self.router = Router(settings)
        self._listening = _listening(settings)
        self.clock = clock
        self.requests = request_path(settings.data_dir)
        self.requests.mkdir(parents=True, exist_ok=True)
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._inflight: set[tuple[str, str]] = set()  # (queue id, recipient) handed to a worker
        self._forced: dict[str, set[str] | None] = {}  # queue id -> recipients due now (None: all)
        self._destinations: dict[str, _Destination] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._full = True  # a full scan is wanted
        self._fresh: set[str] = set()  # committed since the last scan: look at these at least
        self._next_scan = 0.0  # when the next full scan is due (the earliest next_attempt)
        # One runner per data directory (see lock.py); a runner process also checks that the
        # server it works for still exists before each scan and each new delivery.
        self.lock = RunnerLock(lock_path(settings.data_dir))
        self._server_alive = server_alive

    @classmethod
    def for_spool(cls, settings: Settings, spool: Spool, reporter: Reporter,
                  server_alive: Callable[[], bool] | None = None) -> QueueRunner:
        """The runner of ``spool``'s queue, with a resolver as ``[dns]`` says."""
        return cls(settings=settings, store=spool.queue, reporter=reporter,
                   resolver=Resolver(settings.dns.nameservers, settings.dns.timeout),
                   server_alive=server_alive)

    def reconfigure(self, settings: Settings) -> None:
        """SIGHUP: new routes, limits and schedule for what is dispatched from now on."""
        try:
            router = Router(settings)
        except ConfigError as e:
            log.error("reload: keeping the previous delivery routes: %s", e)
            return
        self.settings = settings
        self.router = router
        self._listening = _listening(settings)

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
        current = self._forced.get(queue_id, set())
        if addresses is None or current is None:
            self._forced[queue_id] = None
        else:
            self._forced[queue_id] = current | addresses

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
        while not self._halted:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LOCK_POLL):
                    await self._wake.wait()
            if not self._halted and self._try_lock():
                log.info("queue runner: got %s", self.lock.path)
                return True
        return False

    def _try_lock(self) -> bool:
        try:
            return self.lock.try_acquire()
        except OSError:
            return False

    @property
    def _halted(self) -> bool:
        """Stopped, or a runner process whose server is gone (it must not deliver any more)."""
        if not self._stopping and self._server_alive is not None and not self._server_alive():
            log.info("queue runner: the server is gone; stopping")
            self._stopping = True
        return self._stopping

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._halted:
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
            wait = max(0.05, min(interval, self._next_scan - self.clock()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
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
            by_route: dict[str, tuple[Route, list[str]]] = {}
            force = forced.get(entry.queue_id, set())
            for r in entry.recipients:
                if r.status not in PENDING or (entry.queue_id, r.address) in self._inflight:
                    continue
                if r.next_attempt <= now or force is None or r.address in force:
                    route = self.router.route(_domain(r.address))
                    by_route.setdefault(route.key, (route, []))[1].append(r.address)
                else:
                    next_due = min(next_due, r.next_attempt)
            for route, addresses in by_route.values():
                for i in range(0, len(addresses), limit):
                    chunk = tuple(addresses[i:i + limit])
                    self._inflight.update((entry.queue_id, a) for a in chunk)
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
        while not self._halted and dest.workers < per_destination and dest.workers < len(dest.queue):
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
                    connection = await self._connect(dest.route)
                except _RouteFailure as failure:
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

    async def _connect(self, route: Route) -> _Connection:
        hosts = await self._hosts(route)
        d = self.settings.delivery
        errors: list[SMTPClientError] = []
        last_relay = "none"
        for host in hosts:
            for address in host.addresses:
                last_relay = _relay(host.name, address, route.port)
                try:
                    conn = await OutboundConnection.open(
                        address=address, port=route.port, server_name=host.name,
                        helo=self.settings.hostname, tls=route.tls, verify=d.tls_verify,
                        ca_file=str(d.tls_ca_file) if d.tls_ca_file else None, auth=route.auth,
                        connect_timeout=d.connect_timeout, command_timeout=d.command_timeout,
                        data_timeout=d.data_timeout,
                    )
                except SMTPClientError as e:
                    log.info("connect %s: %s", last_relay, e)
                    errors.append(e)
                    continue
                return _Connection(conn, last_relay, host.name)
        if not errors:
            raise _RouteFailure(temporary=True, status="4.4.1", text=f"no address for {route.key}")
        last = errors[-1]
        temporary = any(e.temporary for e in errors)
        # The client's status: the reply's, or the one it gave the failure (4.7.4 TLS not
        # offered, 4.7.5 handshake failed, 4.7.10 no AUTH without TLS, 4.4.1 no answer, ...).
        status = _as_temporary(last.status) if temporary else last.status
        if last.reply is not None:
            raise _RouteFailure(temporary=temporary, status=status, text=str(last),
                                diagnostic=last.reply.diagnostic(),
                                remote_mta=hosts[-1].name if hosts else None, relay=last_relay)
        raise _RouteFailure(temporary=temporary, status=status, text=str(last), relay=last_relay)

    async def _hosts(self, route: Route) -> list[MXHost]:
        """The hosts to try for ``route``, best first, without ourselves (RFC 5321 5.1)."""
        try:
            if not route.mx:
                if is_ip_literal(route.host):
                    return [MXHost(name=route.host, preference=0, addresses=(route.host,))]
                addresses = await self.resolver.addresses(route.host)
                return [MXHost(name=route.host, preference=0, addresses=tuple(addresses))]
            hosts = await self.resolver.mail_exchangers(route.host)
        except DNSFailure as e:
            raise _RouteFailure(temporary=e.temporary, status=e.status, text=str(e)) from None
        mine = [h.preference for h in hosts if self._is_me(h, route.port)]
        if mine:
            # RFC 5321 5.1: we are one of the MX hosts: only those more preferred may be used.
            hosts = [h for h in hosts if h.preference < min(mine)]
            if not hosts:
                raise _RouteFailure(temporary=False, status="5.4.6",
                                    text=f"mail for {route.host} loops back to myself")
        return hosts

    def _is_me(self, host: MXHost, port: int) -> bool:
        if host.name.lower().rstrip(".") == self.settings.hostname:
            return True
        return any((address, port) in self._listening for address in host.addresses)

    async def _deliver(self, connection: _Connection, work: _Work) -> bool:
        """One transaction for ``work``; False if the connection can no longer be used."""
        loop = asyncio.get_running_loop()
        entry = work.entry
        try:
            message = await loop.run_in_executor(None, self._read_message, entry)
        except FileNotFoundError as e:
            log.info("%s: no longer queued (%s)", work.queue_id, e)
            self._release(work)
            return True
        recipients = [r for r in entry.recipients if r.address in work.addresses and r.status in PENDING]
        if not recipients:
            self._release(work)
            return True
        params = {k: v for k, v in entry.params.items() if k != NOTICE_PARAM}
        out = [OutRecipient(address=r.address, notify=tuple(r.notify) if r.notify is not None else None,
                            orcpt=r.orcpt) for r in recipients]
        try:
            result = await connection.conn.send(sender=entry.sender, recipients=out,
                                                 message=message, params=params)
        except SMTPClientError as e:
            outcome = _Outcome(kind="deferred",
                               status=_as_temporary(e.status),
                               text=str(e), diagnostic=e.reply.diagnostic() if e.reply else None,
                               remote_mta=connection.remote_mta, relay=connection.relay)
            await self._record(work, {r.address: outcome for r in recipients})
            return False
        await self._record(work, self._outcomes(result, connection), dsn_passed=result.dsn)
        return connection.conn.usable

    def _read_message(self, entry: QueueEntry) -> bytes:
        with self.store.open_message(entry.queue_id, entry.body_offset) as message:
            return message.read()

    @staticmethod
    def _outcomes(result: TransactionResult, connection: _Connection) -> dict[str, _Outcome]:
        outcomes = {}
        for address, reply in result.replies.items():
            kind: Literal["sent", "deferred", "bounced"] = (
                "sent" if reply.ok else "deferred" if reply.temporary else "bounced")
            outcomes[address] = _Outcome(kind=kind, status=reply.status(), text=str(reply),
                                         diagnostic=reply.diagnostic(),
                                         remote_mta=connection.remote_mta, relay=connection.relay)
        return outcomes

    def _release(self, work: _Work) -> None:
        self._inflight.difference_update((work.queue_id, a) for a in work.addresses)

    # --- recording an attempt ----------------------------------------------------------------
    async def _record(self, work: _Work, outcomes: dict[str, _Outcome], *, dsn_passed: bool = False) -> None:
        lock = self._locks.setdefault(work.queue_id, asyncio.Lock())
        try:
            async with lock:
                await asyncio.get_running_loop().run_in_executor(
                    None, self._apply, work.queue_id, outcomes, dsn_passed, work.entry)
        except Exception:
            log.exception("%s: recording the delivery attempt failed; it will be repeated",
                          work.queue_id)
        finally:
            self._release(work)

    def _apply(self, queue_id: str, outcomes: dict[str, _Outcome], dsn_passed: bool,
               known: QueueEntry | None = None) -> None:
        """Blocking: update the envelope with ``outcomes``, send the reports, save or remove.

        ``known`` is the entry as the scan read it. When ``outcomes`` cover every recipient
        still pending in it, nobody else can have changed the envelope since (only this
        attempt held those recipients, the others were final), so it is not read again."""
        pending = {r.address for r in known.recipients if r.status in PENDING} if known else None
        if known is not None and pending is not None and pending <= outcomes.keys():
            entry = known
            if not self.store.message_path(queue_id).exists():
                log.info("%s: deleted during delivery", queue_id)
                return
        else:
            try:
                entry = self.store.load(queue_id)
            except FileNotFoundError:
                log.info("%s: deleted during delivery", queue_id)
                return
        now = self.clock()
        q = self.settings.queue
        age = now - entry.received_at
        expired = age >= q.lifetime
        failed: list[RecipientReport] = []
        delayed: list[RecipientReport] = []
        relayed: list[RecipientReport] = []
        updated: list[QueuedRecipient] = []
        for r in entry.recipients:
            o = outcomes.get(r.address)
            if o is None or r.status not in PENDING:
                updated.append(r)
                continue
            attempts = r.attempts + 1
            common = dict(attempts=attempts, last_attempt=now, remote_mta=o.remote_mta)
            if o.kind == "sent":
                r = replace(r, status="delivered", last_error=None, **common)
                if wants(r.notify, "SUCCESS") and not dsn_passed:
                    relayed.append(_report(r, "relayed", o, now))
                status = "sent"
            elif o.kind == "bounced" or expired:
                final_status = "bounced" if entry.sender else "failed"
                r = replace(r, status=final_status, last_error=_one_line(o.text), **common)
                if wants(r.notify, "FAILURE"):
                    failed.append(_report(r, "failed", o, now))
                status = "bounced" if o.kind == "bounced" else "expired"
            else:
                next_attempt = min(now + self._backoff(attempts),
                                   max(entry.received_at + q.lifetime, now + 1.0))
                r = replace(r, status="deferred", last_error=_one_line(o.text), next_attempt=next_attempt, **common)
                if (q.delay_warning > 0 and not r.delay_warned and age >= q.delay_warning
                        and wants(r.notify, "DELAY") and entry.sender):
                    delayed.append(_report(r, "delayed", o, now))
                    r = replace(r, delay_warned=True)
                status = "deferred"
            updated.append(r)
            self._log_attempt(entry, r, o, now, status)
        entry = replace(entry, recipients=tuple(updated))
        unsent = self._send_reports(entry, failed, delayed, relayed)
        if unsent:
            entry = replace(entry, recipients=tuple(self._report_owed(entry, r, unsent, now)
                                                    for r in entry.recipients))
        if all(r.status in FINAL for r in entry.recipients):
            self.store.remove(queue_id, durable=False)
            log.info("%s: removed", queue_id)
        else:
            try:
                self.store.save(entry)
            except FileNotFoundError:
                log.info("%s: deleted during delivery", queue_id)

    def _backoff(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failed attempt: ``[queue] backoff``, the last
        value repeating."""
        backoff = self.settings.queue.backoff
        return backoff[min(attempts - 1, len(backoff) - 1)]

    def _report_owed(self, entry: QueueEntry, r: QueuedRecipient, unsent: dict[str, set[str]],
                     now: float) -> QueuedRecipient:
        """``r`` as it stays when its report of this attempt could not be committed: a failure
        stays pending (deferred on the backoff schedule; the next attempt delivers, or fails and
        reports again), a delay warning stays unsent (the next deferral tries it again)."""
        if r.address in unsent.get("failed", ()):
            log.warning("%s: to=<%s> stays queued: its failure report could not be stored; "
                        "retried at the next attempt", entry.queue_id, r.address)
            return replace(r, status="deferred", next_attempt=now + self._backoff(r.attempts))
        if r.address in unsent.get("delayed", ()):
            return replace(r, delay_warned=False)
        return r

    def _log_attempt(self, entry: QueueEntry, r: QueuedRecipient, o: _Outcome, now: float,
                     status: str) -> None:
        orig = f", orig_to=<{r.original}>" if r.original.lower() != r.address.lower() else ""
        log.info("%s: to=<%s>%s, relay=%s, delay=%.1f, dsn=%s, status=%s (%s)",
                 entry.queue_id, r.address, orig, o.relay, now - entry.received_at, o.status,
                 status, _one_line(o.text))

    def _send_reports(self, entry: QueueEntry, failed: list[RecipientReport],
                      delayed: list[RecipientReport], relayed: list[RecipientReport]) -> dict[str, set[str]]:
        """Commit the reports of one attempt (blocking); the recipients whose report could not
        be committed, by action ("failed", "delayed"). Mail from <> gets none: its failures go
        to the postmaster or the log, and a failed notice to the postmaster only to the log."""
        unsent: dict[str, set[str]] = {}
        if not entry.sender:
            if failed:
                notice = entry.params.get(NOTICE_PARAM)
                if self.settings.delivery.null_sender_failures == "postmaster" and notice != "postmaster":
                    to = self.reporter.postmaster()
                    if not self._report(entry, to, failed, "headers", notice="postmaster"):
                        unsent["failed"] = {r.address for r in failed}
                else:
                    log.warning("%s: undeliverable mail from <> discarded: %s", entry.queue_id,
                                ", ".join(f"<{r.address}>" for r in failed))
        else:
            ret = entry.params.get("RET", "FULL").upper()
            if failed and not self._report(entry, entry.sender, failed, "headers" if ret == "HDRS" else "full"):
                unsent["failed"] = {r.address for r in failed}
            if delayed and not self._report(entry, entry.sender, delayed, "headers"):
                unsent["delayed"] = {r.address for r in delayed}
            if relayed and not self._report(entry, entry.sender, relayed, "headers"):
                # Those recipients have the message: sending it again to retry a success notice
                # would duplicate it, so the notice is what gives way.
                log.error("%s: the \"relayed\" notice to <%s> for %s is dropped", entry.queue_id,
                          entry.sender, ", ".join(f"<{r.address}>" for r in relayed))
        return unsent

    def _report(self, entry: QueueEntry, to: str, reports: Sequence[RecipientReport],
                content: Literal["full", "headers"], notice: str = "dsn") -> bool:
        """Build and commit one report; False (logged) when it could not be stored (a full
        disk, an I/O error), so that the caller keeps what it is about."""
        action = reports[0].action
        try:
            with self.store.open_message(entry.queue_id, entry.body_offset) as original:
                report_id = self.reporter.send(
                    to=to, queue_id=entry.queue_id, arrival=entry.received_at, reports=reports,
                    original=original, return_content=content, envid=entry.params.get("ENVID"),
                    notice=notice)
        except (StorageError, OSError) as e:
            log.warning("%s: the %s report to <%s> could not be stored: %s", entry.queue_id,
                        action, to, e)
            return False
        if report_id is not None:
            self.wake(report_id)  # a report to a remote address waits in the queue now
        return True


def _one_line(text: str, limit: int = 500) -> str:
    """Remote text for a log line and last_error: on one line (a CR/LF could forge a log
    line), cut at ``limit`` characters."""
    clean = single_line(text)
    return clean if len(clean) <= limit else clean[:limit] + "..."


def _as_temporary(status: str) -> str:
    """A status for a failure that is retried: a 5.x.x of a whole attempt (a greeting, a lost
    connection) becomes 4.x.x, as the recipient is deferred, not bounced."""
    return "4" + status[1:] if status.startswith("5") else status


def _listening(settings: Settings) -> set[tuple[str, int]]:
    """The addresses this server's SMTP listens on (an MX among them is this server)."""
    listening = set()
    for spec in settings.smtp.listen:
        with contextlib.suppress(ValueError):
            listening.add(parse_listen(spec))
    return listening


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


def _report(r: QueuedRecipient, action: Literal["failed", "delayed", "relayed"], o: _Outcome,
            now: float) -> RecipientReport:
    status = o.status
    if action == "relayed":
        status = "2.0.0" if not status.startswith("2") else status
    elif action == "failed" and status.startswith("2"):
        status = "5.0.0"
    return RecipientReport(address=r.address, original=original_recipient(r.orcpt, r.original), action=action, status=status,
                           diagnostic=o.diagnostic or o.text, remote_mta=o.remote_mta,
                           last_attempt=now)


def _relay(name: str, address: str, port: int) -> str:
    return f"{name}[{address}]:{port}"
