"""The shared table across real processes: limits hold when workers count at once, and a worker
killed with SIGKILL (holding connections, the table's lock or a mailbox lock) stops no one.

Each worker is tests/unit/sharedstate_child.py, driven line by line over its standard input;
every wait has a deadline."""

from __future__ import annotations

import fcntl
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taube.sharedstate import SharedTable, WorkerIdInUse, create_shared, open_shared

CHILD = Path(__file__).with_name("sharedstate_child.py")
DEADLINE = 30.0
CLIENT = "203.0.113.9"


class Child:
    """One worker process on the table of ``data_dir``, started as ``worker_id``."""

    def __init__(self, data_dir: Path, worker_id: int) -> None:
        self.process = subprocess.Popen([sys.executable, str(CHILD), str(data_dir), str(worker_id)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.first = self.line()

    def line(self) -> str:
        """The next line it writes, within the deadline."""
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(DEADLINE):
                raise TimeoutError("the worker did not answer")
        return self.process.stdout.readline().strip()

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def ask(self, command: str) -> str:
        self.send(command)
        return self.line()

    def kill(self) -> None:
        """SIGKILL, and wait until it is gone (the kernel has then dropped its locks)."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=DEADLINE)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.kill()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[SharedTable]:
    table = create_shared(tmp_path, workers=4)
    yield table
    table.close()


@pytest.fixture
def mine(supervisor: SharedTable, tmp_path: Path) -> Iterator[SharedTable]:
    """This process as worker 1."""
    table = open_shared(tmp_path, worker_id=1)
    yield table
    table.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[type[Child]]:
    """``spawn(worker_id)``: a ready worker on the table of ``tmp_path``; killed at the end."""
    started: list[Child] = []

    def start(worker_id: int) -> Child:
        child = Child(tmp_path, worker_id)
        started.append(child)
        assert child.first == "ready"
        return child

    yield start  # type: ignore[misc]
    for child in started:
        child.stop()


def test_per_client_limit_holds_across_processes(supervisor: SharedTable, spawn) -> None:
    """Four workers each try 300 connections from one address at the same time: exactly the
    limit get in, however their calls interleave."""
    workers = [spawn(k) for k in range(4)]
    for child in workers:
        child.send(f"burst 300 {CLIENT} 0 100000 10 smtp")
    assert sum(int(child.line()) for child in workers) == 10
    assert supervisor.connection_count() == 10


def test_total_limit_holds_across_processes(supervisor: SharedTable, spawn) -> None:
    workers = [spawn(k) for k in range(4)]
    for k, child in enumerate(workers):
        child.send(f"burst 300 198.51.100.{k} 1 25 5 pop3")  # a new address each time
    assert sum(int(child.line()) for child in workers) == 25
    assert supervisor.connection_count() == 25


def test_a_killed_workers_connections_are_released(supervisor: SharedTable, mine: SharedTable,
                                                   spawn) -> None:
    dying = spawn(0)
    assert dying.ask(f"burst 5 {CLIENT} 0 100 5 smtp") == "5"
    assert mine.open_connection(CLIENT, total_limit=100, per_client_limit=5, service="smtp") == \
        "too many connections from your address"
    dying.kill()
    assert supervisor.connection_count() == 5  # still counted: the supervisor has not reaped it
    supervisor.release_worker(0)
    assert supervisor.connection_count() == 0
    assert mine.open_connection(CLIENT, total_limit=100, per_client_limit=5, service="smtp") is None


def test_a_replacement_worker_clears_its_predecessors_share(supervisor: SharedTable, spawn) -> None:
    dying = spawn(2)
    assert dying.ask(f"burst 3 {CLIENT} 1 100 5 smtp") == "3"
    dying.kill()
    assert supervisor.connection_count() == 3
    spawn(2)  # the same id, without release_worker
    assert supervisor.connection_count() == 0


def test_a_live_workers_id_is_not_taken(supervisor: SharedTable, spawn, tmp_path: Path) -> None:
    spawn(0)
    with pytest.raises(WorkerIdInUse):
        open_shared(tmp_path, worker_id=0)
    with pytest.raises(WorkerIdInUse):
        supervisor.release_worker(0)
    late = Child(tmp_path, 0)
    try:
        assert late.first == "in use"
    finally:
        late.stop()


def test_a_worker_killed_holding_the_lock_wedges_no_one(supervisor: SharedTable, mine: SharedTable,
                                                        spawn) -> None:
    dying = spawn(0)
    assert dying.ask("hold") == "held"
    result: list[str | None] = []
    waiting = threading.Thread(target=lambda: result.append(
        mine.open_connection(CLIENT, total_limit=10, per_client_limit=1, service="smtp")))
    waiting.start()
    try:
        dying.kill()
    finally:
        waiting.join(DEADLINE)
    assert result == [None]
    assert supervisor.connection_count() == 1


def test_a_worker_killed_holding_a_mailbox_lock_releases_it(mine: SharedTable, spawn) -> None:
    dying = spawn(0)
    assert dying.ask("lock alice@example.test") == "True"
    assert not mine.lock_mailbox("alice@example.test")
    dying.kill()
    assert mine.lock_mailbox("alice@example.test")
    assert spawn(0).ask("lock alice@example.test") == "False"


def test_failed_logins_are_counted_across_processes(mine: SharedTable, spawn) -> None:
    other = spawn(0)
    assert [other.ask(f"failed {CLIENT} 3600") for _ in range(3)] == ["1", "2", "3"]
    assert mine.auth_failed(CLIENT, 3600) == 4
    assert mine.auth_blocked(CLIENT, 3600, 4)
    assert other.ask(f"failed {CLIENT} 3600") == "5"


def test_a_forked_child_has_a_lock_of_its_own(mine: SharedTable, tmp_path: Path) -> None:
    """A flock belongs to the open file: a child sharing its parent's would not be kept out
    while the parent holds the lock. The child checks without waiting and exits at once."""
    assert mine.lock_mailbox("bob@example.test")
    mine._acquire()
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's result is its exit status
            code = 1
            try:
                try:
                    fcntl.flock(mine._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    code = 0 if mine.worker_id is None and not mine.lock_mailbox("bob@example.test") else 2
            finally:
                os._exit(code)
        deadline = time.monotonic() + DEADLINE
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
            assert time.monotonic() < deadline, "the forked child did not exit"
            time.sleep(0.01)
        assert os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        mine._release()
    other = open_shared(tmp_path, worker_id=2)
    try:  # the child closing its copies released nothing of the parent's
        assert not other.lock_mailbox("bob@example.test")
    finally:
        other.close()
