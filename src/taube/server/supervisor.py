"""The supervisor of ``[server] workers`` processes (more than one; 1 is app.App alone).

What must happen once per server happens here, before any worker accepts: every listener is
bound (server/sockets.py: one ``SO_REUSEPORT`` socket per worker slot and address), the queue is
recovered (data without an envelope was never acknowledged), the self-signed certificate is made
if there is none (workers starting together would race to write it), the shared state's table
is made anew (sharedstate.py; each worker opens it under its slot's id), and the queue runner
process is started (delivery/process.py), with the receiving end of the request socket every
worker sends its wake-ups to (server/channel.py). Then the workers start (server/worker.py) and
the pid file names the supervisor, so ``taube queue flush`` (SIGUSR1) wakes its runner.

Signals, as for a single process: SIGTERM/SIGINT are forwarded to every worker, which stops
accepting and drains within ``shutdown_grace``; the supervisor waits for them, then stops the
runner. SIGHUP re-reads the configuration; when it is valid the runner and every worker are told
to re-read it too (a bad file is logged and nobody changes). SIGUSR1 wakes the runner.

A worker that dies is started again on its slot's sockets, after a wait that doubles with each
worker that dies soon after its start (a crash loop must not spin). Its open connections are
lost; nothing it acknowledged is, since a 250 is sent only after the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys

from ..config import ConfigError, Settings, load_settings
from ..delivery.process import RunnerProcess
from ..net.tls import TLSProvider
from ..pidfile import remove_pid, write_pid
from ..queue.spool import Spool
from ..sharedstate import SharedTable, create_shared
from ..sharedstate_table import WorkerIdInUse
from ..store.maildir import MaildirStore
from .channel import request_pair
from .sockets import Bound, bind_services, close_all, fd_spec, slot_sockets
from .worker import READY

__all__ = ["Supervisor", "WorkerProcess"]

log = logging.getLogger("taube.server")

RESTART_DELAY = 0.1  # seconds before the first restart of a worker that died
MAX_RESTART_DELAY = 30.0  # the longest wait between restarts of a worker that keeps dying
STABLE_AFTER = 10.0  # a worker that lived this long is no crash loop: waits start over
START_TIMEOUT = 60.0  # seconds a new worker has to say it is ready
STOP_MARGIN = 15.0  # beyond the drain (twice shutdown_grace) before a worker is killed


class WorkerFailed(Exception):
    """A worker exited (or hung) before it was ready."""


class WorkerProcess:
    """One worker slot: its process, started again whenever it dies until :meth:`stop`."""

    def __init__(self, supervisor: Supervisor, slot: int) -> None:
        self.supervisor = supervisor
        self.slot = slot
        self.process: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self) -> None:
        """Start the process and wait until it accepts; WorkerFailed if it does not."""
        await self._spawn()

    def supervise(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"worker {self.slot} supervisor")

    async def _spawn(self) -> None:
        sup = self.supervisor
        ready_read, ready_write = os.pipe()
        pairs = slot_sockets(sup.bound, self.slot)
        command = [sys.executable, "-m", "taube.server.worker", "--slot", str(self.slot),
                   "--supervisor", str(os.getpid()), "--requests-fd", str(sup.requests.fileno()),
                   "--ready-fd", str(ready_write), *(f"--listen={spec}" for spec in fd_spec(pairs))]
        if sup.settings.source is not None:
            command += ["--config", str(sup.settings.source)]
        fds = [ready_write, sup.requests.fileno(), *(sock.fileno() for _, sock in pairs)]
        try:
            try:
                self.process = await asyncio.create_subprocess_exec(
                    *command, pass_fds=fds, stdin=asyncio.subprocess.PIPE)
            finally:
                os.close(ready_write)
            stdin = self.process.stdin
            assert stdin is not None
            with contextlib.suppress(ConnectionError):  # it died at once: found below
                stdin.write(sup.settings.model_dump_json().encode("utf-8"))
                await stdin.drain()
                stdin.close()
            await self._wait_ready(ready_read)
        finally:
            os.close(ready_read)
        log.info("worker %d started, pid %d", self.slot, self.process.pid)

    async def _wait_ready(self, fd: int) -> None:
        assert self.process is not None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(START_TIMEOUT):
                # EOF (b""): the worker exited before it was ready
                said = await loop.run_in_executor(None, os.read, fd, len(READY))
        except TimeoutError:
            said = b""
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        if said != READY:
            code = await self.process.wait()
            raise WorkerFailed(f"worker {self.slot} (pid {self.process.pid}) exited with status "
                               f"{code} before it was ready")

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        quick_deaths = 0
        started = loop.time()
        while not self._stopping:
            assert self.process is not None
            code = await self.process.wait()
            # its connections are no longer open: they must stop counting against the limits
            try:
                self.supervisor.state.release_worker(self.slot)
            except WorkerIdInUse:  # a stray process still holds the id: the restart will say so
                log.error("worker %d (pid %d): its slot in the shared state is still held by "
                          "another process", self.slot, self.process.pid)
            if self._stopping:
                return
            quick_deaths = 0 if loop.time() - started >= STABLE_AFTER else quick_deaths + 1
            delay = min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** quick_deaths)
            log.error("worker %d (pid %d) exited with status %s; starting it again in %.1fs",
                      self.slot, self.process.pid, code, delay)
            await asyncio.sleep(delay)
            if self._stopping:
                return
            started = loop.time()
            try:
                await self._spawn()
            except (OSError, WorkerFailed) as e:
                log.error("%s", e)  # process.wait() returns at once: the next, longer wait

    def signal(self, sig: int) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)

    async def halt(self) -> None:
        """No more restarts."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def stop(self, timeout: float) -> None:
        """SIGTERM (the worker drains), then SIGKILL after ``timeout``."""
        await self.halt()
        process = self.process
        if process is None or process.returncode is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                await process.wait()
        except TimeoutError:
            log.error("worker %d (pid %d) did not stop; killing it", self.slot, process.pid)
            self.signal(signal.SIGKILL)
            await process.wait()


class Supervisor:
    """``taube serve`` with more than one worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bound: list[Bound] = []
        self.workers: list[WorkerProcess] = []
        self.requests: socket.socket  # the workers' end of the runner's request socket
        self.runner: RunnerProcess
        self.state: SharedTable  # the supervisor's handle: it opens no connections itself
        self._stop = asyncio.Event()

    @property
    def count(self) -> int:
        return self.settings.server.workers

    async def run(self) -> int:
        s = self.settings
        try:
            self.bound = bind_services(s, self.count)
        except OSError as e:
            log.error("%s", e)
            return 1
        runner_end, self.requests = request_pair()
        spool = Spool(s.data_dir, s.hostname, MaildirStore(s.data_dir / "mail"))
        self.runner = RunnerProcess(s, spool.queue, requests=runner_end)
        try:
            spool.recover()  # before any worker accepts: later it would take their new data files
            if s.tls.cert is None:
                TLSProvider(None, None, s.data_dir, s.hostname)  # make the certificate once
            # a new table: connections counted by an earlier run are gone with their processes
            self.state = create_shared(s.data_dir, workers=self.count)
            try:
                return await self._serve()
            finally:
                self.state.close()
        finally:
            close_all(self.bound)
            runner_end.close()
            self.requests.close()

    async def _serve(self) -> int:
        loop = asyncio.get_running_loop()
        if not self.settings.delivery.runner_process:  # no worker may run a runner of its own
            log.warning("[delivery] runner_process = false applies to workers = 1 only: the "
                        "queue runner runs in its own process")
        try:
            await self.runner.start()
        except OSError as e:
            log.error("cannot start the queue runner process: %s", e)
            return 1
        self.workers = [WorkerProcess(self, slot) for slot in range(self.count)]
        started = await asyncio.gather(*(w.start() for w in self.workers), return_exceptions=True)
        failed = [e for e in started if isinstance(e, BaseException)]
        if failed:
            for e in failed:
                log.error("%s", e)
            await self._stop_all()
            return 1
        for worker in self.workers:
            worker.supervise()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, self.runner.wake)  # taube queue flush/retry
        write_pid(self.settings.data_dir)
        log.info("taube ready: hostname=%s data_dir=%s workers=%d (pids %s)", self.settings.hostname,
                 self.settings.data_dir, self.count, " ".join(str(w.pid) for w in self.workers))
        try:
            await self._stop.wait()
            log.info("shutting down: stopping %d worker(s)", len(self.workers))
            await self._stop_all()
        finally:
            remove_pid(self.settings.data_dir)
        log.info("stopped")
        return 0

    async def _stop_all(self) -> None:
        """No more restarts, then SIGTERM to the workers (they drain) and the runner."""
        await asyncio.gather(*(w.halt() for w in self.workers))
        # New connections are refused from now on, as by a single process that stops: each
        # worker closes its own copies of the sockets as it stops accepting.
        close_all(self.bound)
        timeout = 2 * self.settings.smtp.shutdown_grace + STOP_MARGIN
        # The runner stops alongside: what the draining workers commit is durable in the queue
        # and delivered after the next start, and a runner that got the same SIGINT from the
        # terminal is not started again meanwhile.
        await asyncio.gather(*(w.stop(timeout) for w in self.workers), self.runner.stop())

    def reload(self) -> None:
        """SIGHUP: check the file here first, then let the runner and every worker re-read it."""
        try:
            new = load_settings(self.settings.source)
        except ConfigError as e:
            log.error("reload failed, keeping the running configuration:\n%s", e)
            return
        if new.server != self.settings.server:
            log.warning("reload: [server] changed; restart to apply it")
        # as App.reload: the data directory, the host name and the processes need a restart
        self.settings = new.model_copy(update={"data_dir": self.settings.data_dir,
                                               "hostname": self.settings.hostname,
                                               "server": self.settings.server})
        self.runner.reload(self.settings)
        for worker in self.workers:
            worker.signal(signal.SIGHUP)
        log.info("configuration reloaded from %s; told %d worker(s)",
                 self.settings.source or "built-in defaults", len(self.workers))
