"""Blocking work of the SMTP sessions (the spool's commits, spills and read-backs) run off the
event loop in threads of their own, with the results handed back to the loop several at once.

``loop.run_in_executor`` costs about 20 us of CPU per call under load (a concurrent Future with
its condition, an asyncio Future chained to it, one wake-up of the loop per result) where the
work itself is a few system calls; and the default pool's many threads all compete for the
interpreter lock whenever their fsyncs return together. Here a call is a queue entry and an
asyncio Future; a thread that finishes appends the outcome to a list and wakes the loop only if
no wake-up is pending, so the commits that one directory fsync releases together (see
:class:`taube.store.durable.DirectorySyncs`) cost the loop one wake-up, not one each.

Threads are started as work arrives, up to ``threads``, and stay; the number bounds how many
fsyncs wait at once, which is what lets concurrent commits share the filesystem's journal
commits (16 to 32 are plenty for that, and fewer threads hand the interpreter lock around less).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["COMMITS", "Offload", "THREADS"]

T = TypeVar("T")
THREADS = 32

_Job = tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]


class Offload:
    """Runs ``fn(*args)`` in a thread: ``await offload.run(fn, *args)``. Safe to share between
    event loops (each result goes back to the loop that asked); thread-safe."""

    def __init__(self, threads: int = THREADS, name: str = "taube-offload") -> None:
        if threads < 1:
            raise ValueError("an offload needs at least one thread")
        self.threads = threads
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = 0
        self._idle = 0  # threads waiting for a job
        self._waiting = 0  # jobs queued and not yet taken
        # Outcomes per loop, and whether that loop was already told to collect them.
        self._done: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = {}

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """A Future of the loop that calls this, resolved with what ``fn(*args)`` returned or
        raised. Cancelling it does not stop the work (a commit that started finishes)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            self._waiting += 1
            start = self._waiting > self._idle and self._started < self.threads
            if start:
                self._started += 1
        self._jobs.put((loop, future, fn, args))
        if start:
            threading.Thread(target=self._serve, name=f"{self.name}-{self._started}", daemon=True).start()
        return future

    def _serve(self) -> None:
        jobs = self._jobs
        while True:
            with self._lock:
                self._idle += 1
            job = jobs.get()
            with self._lock:
                self._idle -= 1
                self._waiting -= 1
            if job is None:  # see close()
                return
            loop, future, fn, args = job
            try:
                outcome = (future, fn(*args), None)
            except BaseException as exc:  # handed to the caller, whatever it is
                outcome = (future, None, exc)
            self._hand_back(loop, outcome)
            del job, future, outcome  # nothing of the job is kept while this thread waits

    def _hand_back(self, loop: asyncio.AbstractEventLoop,
                   outcome: tuple[asyncio.Future[Any], Any, BaseException | None]) -> None:
        with self._lock:
            done = self._done.get(loop)
            wake = done is None
            if wake:
                done = self._done[loop] = []
            done.append(outcome)
        if wake:
            try:
                loop.call_soon_threadsafe(self._collect, loop)
            except RuntimeError:  # the loop is closed: nobody waits for these any more
                with self._lock:
                    self._done.pop(loop, None)

    def _collect(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            done = self._done.pop(loop, [])
        for future, result, exc in done:
            if future.cancelled():
                continue
            if exc is None:
                future.set_result(result)
            else:
                future.set_exception(exc)

    def close(self) -> None:
        """Let the threads end once the queued work is done (for tests; the server's offload
        lives as long as the process)."""
        with self._lock:
            started, self._started = self._started, self.threads  # no new threads from now on
        for _ in range(started):
            self._jobs.put(None)


# The spool's work for every SMTP session of this process (net/smtp_spooler.py).
COMMITS = Offload(name="taube-commit")
