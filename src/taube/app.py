"""Composition root: settings -> directory, policy, spool -> listeners; signals.

The only module that names concrete classes. SIGTERM/SIGINT drain and stop; SIGHUP re-reads the
configuration (domains, trusted networks, limits, users) without dropping connections; the
listening addresses themselves need a restart.

With ``[server] workers = 1`` :class:`App` is the whole server: it binds, recovers the queue,
runs the queue runner and writes the pid file. With more, :func:`serve` starts the supervisor
(server/supervisor.py), which does those things once and runs one :class:`App` per worker
process with a :class:`WorkerRole`: the worker only serves connections on the sockets it was
given and sends its requests to the supervisor's queue runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .config import ConfigError, Settings, load_settings
from .delivery.reports import Reporter
from .delivery.process import RunnerProcess
from .delivery.runner import QueueRunner
from .directory.resolve import resolve_recipient
from .directory.sqlite import SQLiteDirectory
from .net.connection import Connection
from .net.listener import Listener
from .net.pop3_session import POP3Session
from .net.services import Services
from .net.smtp_session import Mode, SMTPSession
from .net.tls import TLSProvider
from .pidfile import remove_pid, write_pid
from .lookup import DNSClient
from .policy.dnsbl import DNSLists
from .policy.greylist import Greylist
from .policy.local import LocalPolicy, LocalRules, postmaster_for
from .policy.mailauth import authentication_checks
from .policy.pipeline import Check, Pipeline
from .policy.rates import RateCheck, RateLimits
from .policy.relay import RelayPolicy
from .proto import replies as R
from .queue.spool import Spool
from .server.channel import RunnerChannel
from .sharedstate import LocalState, SharedState, SharedTable, open_shared
from .signing.dkim import Signer
from .signing.keys import KeyStore
from .store.mailbox import MailboxFactory, MaildirMailbox
from .store.maildir import MaildirStore

__all__ = ["App", "WorkerRole", "open_state", "serve"]

log = logging.getLogger("taube")
# Commits wait on fsync; many in flight at once let the filesystem batch them into one journal
# commit, so the pool is sized for concurrency, not for CPUs.
COMMIT_THREADS = 64
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Several processes write to one standard error: each line names its process, as syslog does.
LOG_FORMAT_WORKERS = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """What a worker process is given by its supervisor (server/supervisor.py)."""

    slot: int  # 0 .. workers-1; a restarted worker takes the slot (and sockets) of the dead one
    sockets: Mapping[str, Sequence[socket.socket]]  # service -> listening sockets, bound already
    requests: socket.socket  # the workers' end of the queue runner's request socket
    ready: Callable[[], None]  # called once every listener accepts


def open_state(settings: Settings, role: WorkerRole | None) -> SharedState:
    """The state shared between connections. One process keeps it in memory; a worker opens
    its handle, under its slot's id, on the table the supervisor made (sharedstate.py), so that
    every limit, penalty, mailbox lock and SMTP-after-POP login holds across the workers."""
    if role is None:
        return LocalState()
    return open_shared(settings.data_dir, worker_id=role.slot)


def build_services(settings: Settings, previous: Services | None = None,
                   role: WorkerRole | None = None) -> Services:
    """The services for ``settings``; on reload the directory and the spool are kept (they
    hold open files and the queue-id sequence) and told the new settings. A worker (``role``)
    reaches the queue runner through its request socket instead of running or starting one."""
    if previous is not None:
        previous.directory.reload(settings.domains)
        directory, spool, state, tls = previous.directory, previous.spool, previous.state, previous.tls
        mailboxes = previous.mailboxes
        if tls is not None:
            tls.reload()
        runner, reporter = previous.runner, previous.reporter
        if isinstance(reporter, Reporter):  # the postmaster address follows the settings
            reporter.settings = settings
        if isinstance(runner, QueueRunner):
            runner.reconfigure(settings)
        elif isinstance(runner, RunnerProcess):
            runner.reload(settings)
    else:
        data = settings.data_dir
        directory = SQLiteDirectory(data / "taube.db", settings.domains,
                                    legacy_secrets=settings.auth.legacy_secrets)
        maildirs = MaildirStore(data / "mail")
        spool = Spool(data, settings.hostname, maildirs)
        mailboxes = maildir_mailboxes(maildirs)
        state = open_state(settings, role)
        tls = TLSProvider(settings.tls.cert, settings.tls.key, data, settings.hostname)
        reporter = Reporter(spool, directory, settings)
        runner: QueueRunner | RunnerProcess | RunnerChannel
        if role is not None:
            runner = RunnerChannel(role.requests, spool.queue)
        elif settings.delivery.runner_process:
            runner = RunnerProcess(settings, spool.queue)
        else:
            runner = QueueRunner.for_spool(settings, spool, reporter)
    relay = RelayPolicy(settings.networks())
    return Services(settings=settings, directory=directory, relay=relay,
                    spool=spool, state=state, tls=tls, mailboxes=mailboxes, runner=runner,
                    reporter=reporter, pipeline=Pipeline(inbound_checks(settings, directory, relay, state)),
                    signer=Signer(KeyStore(settings.data_dir), trusted=relay.is_trusted))


def inbound_checks(settings: Settings, directory: SQLiteDirectory, relay: RelayPolicy,
                   state: SharedState) -> list[Check]:
    """The checks every SMTP session runs, in order (policy/pipeline.py): the per-client rates
    first (the cheapest refusal), the DNS lists (looked up from connect), the site's own rules
    (unknown users get 550 before any later check runs), SPF/DKIM/ARC/DMARC with the
    Authentication-Results header, and greylisting last, so that a refusal for any other reason
    is never turned into a 451 and no triple is recorded for it."""
    checks: list[Check] = []
    trusted = relay.is_trusted
    dns = DNSClient(settings.dns.nameservers, settings.dns.timeout)
    limits = RateLimits.from_settings(settings.smtp)
    if limits.enabled:
        checks.append(RateCheck.open(settings.data_dir, limits, trusted))
    lists = DNSLists(settings.checks.dnsbl, settings.checks.dnswl, dns, trusted)
    if lists.enabled:
        checks.append(lists)
    checks.append(LocalPolicy(LocalRules.from_settings(settings), directory, relay, state))
    checks += authentication_checks(settings.checks, settings.hostname, dns, trusted)
    if settings.checks.greylist:
        checks.append(Greylist.open(settings.data_dir, delay=settings.checks.greylist_delay,
                                    expiry=settings.checks.greylist_expiry, trusted=trusted))
    return checks


def maildir_mailboxes(maildirs: MaildirStore) -> MailboxFactory:
    """POP3's maildrops: each user's Maildir in the store local delivery writes to."""
    def open_mailbox(user: str) -> MaildirMailbox:
        return MaildirMailbox(maildirs.maildir_path(user))
    return open_mailbox


class App:
    def __init__(self, settings: Settings, role: WorkerRole | None = None) -> None:
        self.role = role
        self.services = build_services(settings, role=role)
        self.listeners: list[Listener] = []
        self._stop = asyncio.Event()

    @property
    def settings(self) -> Settings:
        return self.services.settings

    def _session_factory(self, mode: Mode) -> Callable[[Connection, str], SMTPSession]:
        """Each session gets the sections it owns as they are when it starts: [smtp] holds the
        limits of every SMTP service, [submission] and [smtps] only say where to listen."""
        def factory(io: Connection, client_ip: str) -> SMTPSession:
            s = self.settings
            return SMTPSession(self.services, io, client_ip, smtp=s.smtp, auth=s.auth,
                               hostname=s.hostname, mode=mode)
        return factory

    def _pop3_factory(self, implicit_tls: bool) -> Callable[[Connection, str], POP3Session]:
        def factory(io: Connection, client_ip: str) -> POP3Session:
            services = self.services
            s = services.settings
            return POP3Session(services, io, client_ip, pop3=s.pop3, auth=s.auth, hostname=s.hostname,
                               implicit_tls=implicit_tls)
        return factory

    def _pop3_limits(self, client_ip: str) -> tuple[int, int | None]:
        p = self.settings.pop3
        return p.max_connections, p.max_connections_per_client

    def _pop3_refusal(self, reason: str) -> bytes:
        return f"-ERR [SYS/TEMP] {reason}\r\n".encode()

    def _tls_context(self) -> ssl.SSLContext:
        assert self.services.tls is not None
        return self.services.tls.context

    def _smtp_limits(self, client_ip: str) -> tuple[int, int | None]:
        """Trusted networks have no per-client limit (as Postfix exempts mynetworks from
        smtpd_client_connection_count_limit); max_connections holds for everyone."""
        s = self.settings.smtp
        if self.services.relay.is_trusted(client_ip):
            return s.max_connections, None
        return s.max_connections, s.max_connections_per_client

    def _smtp_refusal(self, reason: str) -> bytes:
        return R.closing(self.settings.hostname, "4.7.0", f"Error: {reason}").encode()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(COMMIT_THREADS, thread_name_prefix="taube-io"))
        role = self.role
        if role is None:  # a worker's supervisor did this before any worker accepted
            self.services.spool.recover()
        state = self.services.state
        s = self.settings
        services = (
            ("smtp", s.smtp.listen, self._session_factory("smtp"), self._smtp_limits, self._smtp_refusal, False),
            ("submission", s.submission.listen, self._session_factory("submission"), self._smtp_limits,
             self._smtp_refusal, False),
            ("smtps", s.smtps.listen, self._session_factory("smtps"), self._smtp_limits, self._smtp_refusal, True),
            ("pop3", s.pop3.listen, self._pop3_factory(False), self._pop3_limits, self._pop3_refusal, False),
            ("pop3s", s.pop3s.listen, self._pop3_factory(True), self._pop3_limits, self._pop3_refusal, True),
        )
        for name, addresses, factory, limits, refusal, implicit_tls in services:
            sockets = role.sockets.get(name, ()) if role is not None else None
            if not (addresses if sockets is None else sockets):
                continue
            listener = Listener(name, addresses, factory, state, limits, refusal,
                                tls=self._tls_context if implicit_tls else None,
                                counted_as="pop3" if name.startswith("pop3") else "smtp", sockets=sockets)
            try:
                await listener.start()
            except OSError as e:
                log.error("cannot listen for %s on %s: %s", name, addresses, e)
                await asyncio.gather(*(done.stop(0) for done in self.listeners))
                return 1
            self.listeners.append(listener)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        runner = self.services.runner
        runner_task: asyncio.Task[None] | None = None
        if isinstance(runner, RunnerProcess):
            try:
                await runner.start()
            except OSError as e:
                log.error("cannot start the queue runner process: %s", e)
                await asyncio.gather(*(done.stop(0) for done in self.listeners))
                return 1
        elif isinstance(runner, QueueRunner):
            runner_task = asyncio.create_task(runner.run(), name="queue runner")
        if runner is not None:
            # SIGUSR1: `taube queue flush/retry` left a request in queue/requests
            loop.add_signal_handler(signal.SIGUSR1, runner.wake)
        if role is None:
            self._check_postmaster()
            write_pid(self.settings.data_dir)
            log.info("taube ready: hostname=%s data_dir=%s", self.settings.hostname, self.settings.data_dir)
        else:
            if role.slot == 0:  # one warning, not one per worker
                self._check_postmaster()
            log.info("worker %d ready", role.slot)
            role.ready()
        try:
            await self._stop.wait()
            log.info("shutting down: draining %d connection(s)", self.services.state.connection_count())
            grace = self.settings.smtp.shutdown_grace
            await asyncio.gather(*(listener.stop(grace) for listener in self.listeners))
            if isinstance(runner, (QueueRunner, RunnerProcess)):
                await runner.stop()
            if runner_task is not None:
                runner_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await runner_task
        finally:
            if role is None:
                remove_pid(self.settings.data_dir)
            for check in self.services.pipeline.checks:
                if isinstance(check, (RateCheck, Greylist)):
                    check.close()
            if isinstance(self.services.state, SharedTable):
                self.services.state.close()
        log.info("stopped")
        return 0

    def _check_postmaster(self) -> None:
        address = postmaster_for(self.settings, self.services.directory)
        if resolve_recipient(self.services.directory, address).status != "ok":
            log.warning("postmaster %s is neither a user nor an alias: mail to postmaster will be "
                        "refused (RFC 5321 4.5.1 requires it); add one with `taube alias add`", address)

    def reload(self) -> None:
        """SIGHUP: new settings and directory for new transactions; old ones finish as they are."""
        try:
            settings = load_settings(self.settings.source)
        except ConfigError as e:
            log.error("reload failed, keeping the running configuration:\n%s", e)
            return
        for what, old, new in (("[smtp] listen", self.settings.smtp.listen, settings.smtp.listen),
                               ("[submission] listen", self.settings.submission.listen, settings.submission.listen),
                               ("[smtps] listen", self.settings.smtps.listen, settings.smtps.listen),
                               ("[pop3] listen", self.settings.pop3.listen, settings.pop3.listen),
                               ("[pop3s] listen", self.settings.pop3s.listen, settings.pop3s.listen),
                               ("data_dir", self.settings.data_dir, settings.data_dir),
                               ("hostname", self.settings.hostname, settings.hostname)):
            if old != new:
                log.warning("reload: %s changed; restart to apply it", what)
        settings = settings.model_copy(update={"data_dir": self.settings.data_dir,
                                               "hostname": self.settings.hostname})
        self.services = build_services(settings, self.services, self.role)
        log.info("configuration reloaded from %s", settings.source or "built-in defaults")


def serve(settings: Settings) -> int:
    """``taube serve``: one process, or the supervisor of ``[server] workers`` processes."""
    workers = settings.server.workers
    logging.basicConfig(level=settings.log.level.upper(),
                        format=LOG_FORMAT if workers == 1 else LOG_FORMAT_WORKERS, stream=sys.stderr)
    from .loop import run  # uvloop when installed, unless TAUBE_EVENT_LOOP=asyncio
    if workers == 1:
        return run(App(settings).run())
    from .server.supervisor import Supervisor  # only a supervisor needs it
    return run(Supervisor(settings).run())
