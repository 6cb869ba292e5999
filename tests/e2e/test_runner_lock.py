"""One queue runner per data directory, across real processes: a runner orphaned by a killed
server and the new server's runner never deliver the same message twice.

Only processes this test started are signalled, by pid: the server (through TaubeServer) and
its queue runner process (the pid the server logs when it starts it).
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.e2e.conftest import TaubeServer, wait_for
from tests.e2e.delivery_helpers import message, queue_empty, queue_section, send, transport
from tests.peer import ScriptedPeer

_RUNNER = re.compile(r"queue runner process (\d+) started")


def runner_pids(server: TaubeServer) -> list[int]:
    return [int(pid) for pid in _RUNNER.findall(server.log)]


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its new parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def stays(predicate: Callable[[], bool], seconds: float) -> bool:
    """``predicate`` holds on every look for ``seconds`` (fails at the first look it does not)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(0.05)
    return True


def test_an_orphaned_runner_and_the_new_servers_runner_never_deliver_twice(make_server) -> None:
    with ScriptedPeer() as peer:
        server = make_server(domains=("a.test",),
                             extra_toml=transport({"peer.test": f"{peer.host}:{peer.port}"})
                             + queue_section())
        server.add_user("alice@a.test")
        server.start()
        send(server, "alice@a.test", ["first@peer.test"], message(subject="first", to="first@peer.test"))
        peer.wait_for_transactions(1, timeout=20)
        wait_for(lambda: queue_empty(server), what="first message delivered")
        [orphan] = runner_pids(server)
        lock = server.data_dir / "queue" / "runner.lock"
        assert lock.read_text().strip() == str(orphan)

        os.kill(orphan, signal.SIGSTOP)  # holding the lock, idle
        try:
            # Committed while the runner is stopped: it still owes this delivery ...
            send(server, "alice@a.test", ["second@peer.test"], message(subject="second", to="second@peer.test"))
            server.kill()  # ... and its server dies without telling it
            server.start()  # a new server on the same data directory, with a runner of its own
            wait_for(lambda: f"held by another queue runner (pid {orphan})" in server.log,
                     what="the new runner waiting for the lock")
            assert str(lock) in server.log
            new_runner = runner_pids(server)[-1]
            assert new_runner != orphan
            # The message is due and both runners could deliver it: neither does while the
            # stopped orphan holds the lock.
            assert stays(lambda: len(peer.transactions) == 1, seconds=2.5)
            assert not queue_empty(server)
        finally:
            os.kill(orphan, signal.SIGCONT)
        # The orphan sees its server is gone and exits; then the new runner takes over.
        wait_for(lambda: gone(orphan), what="the orphaned runner to exit")
        transactions = peer.wait_for_transactions(2, timeout=20)
        assert [r for r, _ in transactions[1].recipients] == ["second@peer.test"]
        wait_for(lambda: queue_empty(server), what="second message delivered")
        assert len(peer.transactions) == 2  # each message exactly once
        log = server.log
        attempt = "to=<second@peer.test>, relay="
        assert log.count(attempt) == 1
        assert log.index(f"got {lock}") < log.index(attempt)  # by the new runner
        assert log.index("the server is gone") < log.index(f"got {lock}")
        assert lock.read_text().strip() == str(new_runner)
        assert server.stop() == 0
