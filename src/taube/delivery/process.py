"""The queue runner in a process of its own, so that receiving and delivering use two cores.

``taube serve`` starts ``python -m taube.delivery.process --fd N [--config FILE]`` with one end
of a socket pair; :class:`RunnerProcess` is the server's side (the sessions' ``QueueControl``),
:func:`main` the runner's. Over the socket the server sends one line per request:

``wake <queue id>``   a message was committed: look at it now
``scan``              scan the whole queue now (``taube queue flush/retry`` left a request)
``flush <domain|*> <0|1>``  ETRN: make the domain's (and with 1 its subdomains') mail due now

Lines are at most :data:`MAX_LINE` octets; anything else is ignored. With several worker
processes (``[server] workers``) the same lines also arrive as datagrams, one request each, on
``--requests-fd``: every worker holds the sending end of one datagram socket pair, so a wake-up
costs a worker one ``send`` and never passes through the supervisor. The runner stops on SIGTERM,
re-reads the configuration on SIGHUP (both forwarded by the server), and stops by itself when the
socket closes or when it finds itself re-parented (the server is gone), so that a killed server
never leaves a runner behind; should one linger (stopped, busy), the runner lock (:mod:`.lock`)
keeps it and the new server's runner from both delivering. The server restarts a runner that
exits while it runs. Both processes log to the same standard error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..config import ConfigError, Settings, load_settings
from ..queue.store import QueueStore
from .runner import QueueRunner, hand_to_loop

__all__ = ["MAX_LINE", "RunnerProcess", "apply_request", "count_pending", "flush_request", "main",
           "wake_request"]

log = logging.getLogger("taube.delivery")

MAX_LINE = 1024
RESTART_DELAY = 1.0  # seconds before a runner that died is started again
STOP_TIMEOUT = 15.0  # seconds a runner has to stop before it is killed
WRITE_BUFFER_LIMIT = 1 << 20  # octets of requests queued for the runner; beyond: dropped
THREADS = 16
SERVER_CHECK = 1.0  # seconds between looks at whether the server is still our parent


def count_pending(store: QueueStore, domain: str | None, subdomains: bool) -> int:
    """Messages with a recipient waiting in ``domain`` (None: any), as ETRN reports them."""
    domain = domain.lower().rstrip(".") if domain else None
    return sum(1 for entry in store.list() if entry.waiting_for(domain, subdomains))


class RunnerProcess:
    """The server's handle on the runner process: starts, feeds, supervises and stops it."""

    def __init__(self, settings: Settings, store: QueueStore,
                 requests: socket.socket | None = None) -> None:
        """``requests``: the receiving end of the workers' datagram socket, handed to every
        runner this object starts (it outlives a runner, so requests wait for the next one)."""
        self.settings = settings
        self.store = store
        self._requests = requests
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="queue runner supervisor")

    async def _spawn(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        command = [sys.executable, "-m", "taube.delivery.process", "--fd", str(theirs.fileno())]
        if self.settings.source is not None:
            command += ["--config", str(self.settings.source)]
        fds = [theirs.fileno()]
        if self._requests is not None:
            command += ["--requests-fd", str(self._requests.fileno())]
            fds.append(self._requests.fileno())
        try:
            self._process = await asyncio.create_subprocess_exec(
                *command, pass_fds=fds, stdin=asyncio.subprocess.DEVNULL)
        finally:
            theirs.close()
        _, self._writer = await asyncio.open_unix_connection(sock=mine)
        log.info("queue runner process %d started", self._process.pid)

    async def _supervise(self) -> None:
        while not self._stopping:
            assert self._process is not None
            code = await self._process.wait()
            if self._stopping:
                return
            log.error("queue runner process %d exited with status %s; starting it again",
                      self._process.pid, code)
            self._close_writer()
            await asyncio.sleep(RESTART_DELAY)
            if not self._stopping:
                try:
                    await self._spawn()
                except OSError as e:
                    log.error("cannot start the queue runner: %s", e)
                    self._process = None
                    return

    # --- QueueControl --------------------------------------------------------------------------
    def wake(self, queue_id: str | None = None) -> None:
        """Safe from any thread: from another one it is passed to the server's event loop."""
        if hand_to_loop(self._loop, self.wake, queue_id):
            return
        self._send(wake_request(queue_id))

    def flush(self, domain: str | None, *, subdomains: bool = False) -> int:
        count = count_pending(self.store, domain, subdomains)
        if count:
            self._send(flush_request(domain, subdomains))
        return count

    def _send(self, line: str) -> None:
        """Queue one request line. Never blocks; when the runner is not reading (restarting,
        or far behind) requests are dropped: its periodic scan finds the mail anyway."""
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        if writer.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            return
        writer.write(line.encode("ascii", "replace")[: MAX_LINE - 1] + b"\n")

    # --- signals -------------------------------------------------------------------------------
    def reload(self, settings: Settings) -> None:
        self.settings = settings
        self._signal(signal.SIGHUP)

    def _signal(self, sig: int) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`; an interrupted delivery is
        repeated later (at-least-once)."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        process = self._process
        if process is not None and process.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await process.wait()
            except TimeoutError:
                log.error("queue runner process %d did not stop; killing it", process.pid)
                self._signal(signal.SIGKILL)
                await process.wait()
        self._close_writer()

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# --- the runner process ----------------------------------------------------------------------
def build_runner(settings: Settings) -> QueueRunner:
    """The queue runner with its own directory, spool and resolver for ``settings``."""
    from ..directory.sqlite import SQLiteDirectory
    from ..queue.spool import Spool
    from ..store.maildir import MaildirStore
    from .reports import Reporter

    data = settings.data_dir
    directory = SQLiteDirectory(data / "taube.db", settings.domains,
                                legacy_secrets=settings.auth.legacy_secrets)
    spool = Spool(data, settings.hostname, MaildirStore(data / "mail"))
    return QueueRunner.for_spool(settings, spool, Reporter(spool, directory, settings))


async def _serve(settings: Settings, fd: int, requests_fd: int | None = None) -> int:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(THREADS, thread_name_prefix="taube-runner"))
    server = os.getppid()
    runner = build_runner(settings)
    stop = asyncio.Event()

    def reload() -> None:
        try:
            new = load_settings(settings.source)
        except ConfigError as e:
            log.error("queue runner: reload failed, keeping the running configuration:\n%s", e)
            return
        runner.reconfigure(new.model_copy(update={"data_dir": settings.data_dir,
                                                  "hostname": settings.hostname}))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGUSR1, runner.wake)
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd))
    task = asyncio.create_task(runner.run(), name="queue runner")
    requests = asyncio.create_task(_read_requests(reader, runner), name="runner requests")
    watch = asyncio.create_task(_watch_server(server, runner), name="server watch")
    stopped = asyncio.create_task(stop.wait())
    datagrams = None
    if requests_fd is not None:
        datagrams = asyncio.create_task(_read_datagrams(socket.socket(fileno=requests_fd), runner),
                                        name="worker requests")
    await asyncio.wait({requests, watch, stopped, task}, return_when=asyncio.FIRST_COMPLETED)
    if datagrams is not None:
        datagrams.cancel()
        await asyncio.gather(datagrams, return_exceptions=True)
    if requests.done() and not stop.is_set() and not watch.done():
        log.info("queue runner: the server is gone; stopping")
    await runner.stop()
    for pending in (task, requests, watch, stopped):
        pending.cancel()
    await asyncio.gather(task, requests, watch, stopped, return_exceptions=True)
    writer.close()
    return 0


async def _watch_server(server: int, runner: QueueRunner) -> None:
    """Stop ``runner`` once the server (our parent, process ``server``) is gone: we are then
    re-parented. The closed socket says so too, but not to a runner that was stopped or busy
    when it closed; a runner left behind must not deliver any more (lock.py)."""
    while os.getppid() == server:
        await asyncio.sleep(SERVER_CHECK)
    log.info("queue runner: the server is gone; stopping")
    await runner.stop()


async def _read_requests(reader: asyncio.StreamReader, runner: QueueRunner) -> None:
    """Apply the server's request lines until it closes the socket."""
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            return  # EOF: the server is gone
        except asyncio.LimitOverrunError:
            await reader.read(MAX_LINE)  # an overlong line: skip it
            continue
        apply_request(line, runner)


async def _read_datagrams(sock: socket.socket, runner: QueueRunner) -> None:
    """Apply the workers' request datagrams (one request line each) as they arrive."""
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    while True:
        apply_request(await loop.sock_recv(sock, MAX_LINE), runner)


def wake_request(queue_id: str | None) -> str:
    """The request line for :meth:`QueueRunner.wake`."""
    return f"wake {queue_id}" if queue_id else "scan"


def flush_request(domain: str | None, subdomains: bool) -> str:
    """The request line for :meth:`QueueRunner.flush` (ETRN)."""
    return f"flush {domain.lower() if domain else '*'} {int(subdomains)}"


def apply_request(line: bytes, runner: QueueRunner) -> None:
    """Carry out one request line (see the module docstring)."""
    match line.decode("ascii", "replace").split():
        case ["wake", queue_id]:
            runner.wake(queue_id)
        case ["scan"]:
            runner.wake()
        case ["flush", domain, subdomains]:
            runner.flush(None if domain == "*" else domain, subdomains=subdomains == "1")
        case _:
            log.warning("queue runner: unknown request %r", line[:80])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="taube.delivery.process")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--requests-fd", type=int)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as e:
        print(f"taube queue runner: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log.level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    started = time.monotonic()
    code = asyncio.run(_serve(settings, args.fd, args.requests_fd))
    log.info("queue runner process %d stopped after %.0fs", os.getpid(), time.monotonic() - started)
    return code


if __name__ == "__main__":
    sys.exit(main())
