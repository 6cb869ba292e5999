"""``[server] workers = 2``: the real ``taube serve`` as a supervisor with two worker processes.

Mail accepted on the shared ports lands durably whichever worker took the connection (each log
line names its process, so the tests see both at work); a killed worker is started again and
nothing it acknowledged is lost; SIGHUP reaches every worker; SIGTERM leaves no process behind;
one queue runner delivers what every worker accepted, woken by their datagrams, by ETRN and by
``taube queue flush`` (SIGUSR1 to the pid file's process, the supervisor).
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from taube.pidfile import running_pid
from tests.e2e.conftest import TaubeServer, wait_for
from tests.e2e.delivery_helpers import message, recipient_states, transport
from tests.e2e.rawsmtp import RawSMTP
from tests.peer import ScriptedPeer

WORKERS = 2
MESSAGES = 24  # each on its own connection: all on one of two workers would be a 2**-23 chance
QUEUED = re.compile(r"\[(\d+)\]: (\w+): client=.* result=queued")


def start(make_server, **kwargs) -> TaubeServer:
    server = make_server(workers=WORKERS, **kwargs)
    server.add_user("alice@example.test")
    server.start()
    wait_for(lambda: "taube ready" in server.log, what="the supervisor's ready line")
    return server


def worker_pids(server: TaubeServer) -> list[int]:
    """The pids of the running workers, by slot, from the supervisor's log lines."""
    slots: dict[int, int] = {}
    for slot, pid in re.findall(r"worker (\d+) started, pid (\d+)", server.log):
        slots[int(slot)] = int(pid)
    return [slots[slot] for slot in sorted(slots)]


def runner_pids(server: TaubeServer) -> list[int]:
    return [int(pid) for pid in re.findall(r"queue runner process (\d+) started", server.log)]


def accepted_by(server: TaubeServer) -> dict[str, int]:
    """Queue id -> the pid of the process that logged its acceptance."""
    return {queue_id: int(pid) for pid, queue_id in QUEUED.findall(server.log)}


def send_one(server: TaubeServer, to: str = "alice@example.test") -> str:
    """One message on a connection of its own; the queue id of its 250."""
    with smtplib.SMTP(server.host, server.port, timeout=15) as client:
        client.ehlo("client.test")
        client.mail("sender@client.test")
        code, _ = client.rcpt(to)
        assert code == 250, (code, to)
        code, reply = client.data(message(to=to))
        assert code == 250, reply
    return re.search(r"queued as (\w+)", reply.decode()).group(1)  # type: ignore[union-attr]


def send_many(server: TaubeServer, count: int, to: str = "alice@example.test") -> list[str]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: send_one(server, to), range(count)))


def stored_ids(server: TaubeServer, address: str) -> list[str]:
    """The queue ids of the messages in ``address``'s Maildir (from the file names)."""
    new = server.maildir(address) / "new"
    names = [p.name for p in new.iterdir()] if new.is_dir() else []
    return [m.group(1) for name in names if (m := re.search(r"Q(\w+)\.", name))]


def gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "State:\tZ" in status  # a zombie has exited; only its parent's wait is missing


def test_mail_through_the_shared_port_lands_durably_from_both_workers(make_server) -> None:
    server = start(make_server)
    workers = worker_pids(server)
    assert len(workers) == WORKERS and server.proc is not None and server.proc.pid not in workers
    ids = send_many(server, MESSAGES)
    assert len(set(ids)) == MESSAGES
    assert sorted(stored_ids(server, "alice@example.test")) == sorted(ids)
    by = accepted_by(server)
    assert {by[queue_id] for queue_id in ids} == set(workers)


def test_a_killed_worker_is_restarted_and_nothing_acknowledged_is_lost(make_server) -> None:
    server = start(make_server)
    before = worker_pids(server)
    acked = send_many(server, 8)
    os.kill(before[0], signal.SIGKILL)
    wait_for(lambda: worker_pids(server)[0] != before[0], what="worker 0 started again")
    after = worker_pids(server)
    assert after[1] == before[1] and gone(before[0])
    assert re.search(rf"worker 0 \(pid {before[0]}\) exited with status -9", server.log)
    # The new worker serves slot 0's sockets: both workers take connections again.
    acked += send_many(server, MESSAGES)
    assert set(acked) <= set(stored_ids(server, "alice@example.test"))
    by = accepted_by(server)
    assert {by[queue_id] for queue_id in acked[8:]} == set(after)


def test_sighup_reaches_every_worker(make_server) -> None:
    server = start(make_server, trusted=())  # untrusted: mail for a foreign domain is refused
    client = RawSMTP(server.port)
    client.send(b"EHLO client.test\r\n")
    client.reply()
    client.send(b"MAIL FROM:<sender@client.test>\r\n")
    client.reply()
    client.send(b"RCPT TO:<carol@new.test>\r\n")
    assert client.reply().startswith("554 5.7.1")
    client.sock.close()
    server.config.write_text(server.config.read_text().replace(
        'domains = ["example.test"]', 'domains = ["example.test", "new.test"]'))
    server.add_user("carol@new.test")
    server.send_signal(signal.SIGHUP)
    workers = worker_pids(server)
    for pid in workers:
        wait_for(lambda pid=pid: f"[{pid}]: configuration reloaded" in server.log,
                 what=f"worker {pid} reloaded")
    ids = send_many(server, MESSAGES, to="carol@new.test")
    assert sorted(stored_ids(server, "carol@new.test")) == sorted(ids)
    by = accepted_by(server)
    assert {by[queue_id] for queue_id in ids} == set(workers)


def test_connection_limits_hold_across_workers(make_server) -> None:
    """Per-client limit 3 for an untrusted client: the fourth connection is refused whichever
    worker takes it, and a closed one frees its place (the shared table, not each worker)."""
    server = start(make_server, trusted=(), smtp_toml="max_connections_per_client = 3")
    held = []
    for _ in range(3):
        client = RawSMTP(server.port)  # reads the greeting
        assert client.greeting.startswith("220 ")
        held.append(client)
    for _ in range(4):  # whichever worker the kernel picks
        extra = RawSMTP(server.port)
        assert extra.greeting.startswith("421 4.7.0"), "a fourth connection was accepted"
        extra.sock.close()
    held.pop().sock.close()

    def admitted() -> bool:
        client = RawSMTP(server.port)
        try:
            return client.greeting.startswith("220 ")
        finally:
            client.sock.close()
    wait_for(admitted, what="a place freed by the closed connection")
    for client in held:
        client.sock.close()


def test_a_killed_workers_connections_stop_counting(make_server) -> None:
    server = start(make_server, trusted=(), smtp_toml="max_connections_per_client = 6")
    held = [RawSMTP(server.port) for _ in range(6)]  # the kernel spreads them over both workers
    assert all(client.greeting.startswith("220 ") for client in held)
    victim = worker_pids(server)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: worker_pids(server)[0] != victim, what="worker 0 started again")
    for client in held:
        client.sock.close()

    def all_admitted() -> bool:
        clients = [RawSMTP(server.port) for _ in range(6)]
        try:
            return all(client.greeting.startswith("220 ") for client in clients)
        finally:
            for client in clients:
                client.sock.close()
    # the dead worker's share was given back: all six places are free again
    wait_for(all_admitted, what="six connections admitted")


def test_sigterm_stops_every_process(make_server) -> None:
    server = start(make_server)
    assert server.proc is not None
    supervisor = server.proc.pid
    assert running_pid(server.data_dir) == supervisor  # taube queue flush signals the supervisor
    children = worker_pids(server) + runner_pids(server)
    assert len(children) == WORKERS + 1 and not any(gone(pid) for pid in children)
    assert server.stop(signal.SIGTERM) == 0
    wait_for(lambda: all(gone(pid) for pid in children), what="workers and runner gone")
    assert running_pid(server.data_dir) is None
    assert "Traceback" not in server.log


@pytest.fixture
def peer():
    with ScriptedPeer() as p:
        yield p


def relay_server(make_server, peer: ScriptedPeer) -> TaubeServer:
    """Remote mail goes to the peer; the runner looks at the queue only when woken (the scan
    interval and the backoff are an hour)."""
    return start(make_server, extra_toml=transport({"peer.test": f"{peer.host}:{peer.port}"})
                 + '[queue]\nscan_interval = "1h"\nbackoff = ["1h"]\n')


def test_one_queue_runner_delivers_what_every_worker_accepted(make_server, peer) -> None:
    server = relay_server(make_server, peer)
    [runner] = runner_pids(server)
    lock = server.data_dir / "queue" / "runner.lock"
    wait_for(lambda: lock.exists() and lock.read_text().strip() == str(runner),
             what="the runner lock held")
    ids = send_many(server, MESSAGES, to="bob@peer.test")
    # Woken by each worker's datagram: nothing else would look at the queue within the hour.
    peer.wait_for_transactions(MESSAGES, timeout=30)
    by = accepted_by(server)
    assert {by[queue_id] for queue_id in ids} == set(worker_pids(server))
    assert runner_pids(server) == [runner]


def test_etrn_and_queue_flush_reach_the_runner(make_server, peer) -> None:
    peer.rcpt_reply = "450 4.2.1 try later"
    server = relay_server(make_server, peer)
    first, second = send_one(server, "bob@peer.test"), send_one(server, "carol@peer.test")
    wait_for(lambda: {r["status"] for r in recipient_states(server).values()} == {"deferred"}
             and len(recipient_states(server)) == 2, what="both deferred")
    peer.rcpt_reply = "250 2.1.5 Ok"
    # taube queue flush: a request file and SIGUSR1 to the supervisor, which wakes its runner
    server.cli("queue", "retry", first)
    [tx] = peer.wait_for_transactions(1, timeout=20)
    assert [r for r, _ in tx.recipients] == ["bob@peer.test"]
    # ETRN, answered by whichever worker took the connection
    client = RawSMTP(server.port)
    client.send(b"EHLO client.test\r\n")
    client.reply()
    client.send(b"ETRN peer.test\r\n")
    assert client.reply().startswith("253 ")
    client.send(b"QUIT\r\n")
    client.reply()
    client.sock.close()
    transactions = peer.wait_for_transactions(2, timeout=20)
    assert [r for r, _ in transactions[1].recipients] == ["carol@peer.test"]
    assert second in accepted_by(server)


def test_a_killed_supervisor_leaves_no_worker_behind(make_server) -> None:
    server = start(make_server)
    children = worker_pids(server) + runner_pids(server)
    server.kill()
    # each notices it was re-parented, drains and stops
    wait_for(lambda: all(gone(pid) for pid in children), what="workers and runner gone")
    assert "the supervisor" in server.log and "is gone; stopping" in server.log
