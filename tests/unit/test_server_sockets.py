"""The supervisor's listening sockets (server/sockets.py) and the workers' request channel to the
queue runner (server/channel.py), without processes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from taube.config import Settings
from taube.queue.store import QueueStore
from taube.server.channel import RunnerChannel, request_pair
from taube.server.sockets import (
    bind_services,
    close_all,
    fd_spec,
    parse_fd_spec,
    slot_sockets,
)
from tests.e2e.conftest import free_port


def settings(smtp: list[str], pop3: list[str] | None = None) -> Settings:
    return Settings.model_validate({"smtp": {"listen": smtp}, "submission": {"listen": []},
                                    "smtps": {"listen": []}, "pop3": {"listen": pop3 or []},
                                    "pop3s": {"listen": []}})


def test_one_reuseport_socket_per_worker_on_each_address() -> None:
    smtp, pop3 = free_port(), free_port()
    bound = bind_services(settings([f"127.0.0.1:{smtp}"], [f"127.0.0.1:{pop3}"]), 3)
    try:
        assert [(b.service, len(b.slots)) for b in bound] == [("smtp", 3), ("pop3", 3)]
        for b in bound:
            ports = {sock.getsockname()[1] for sock in b.slots}
            assert ports == {smtp if b.service == "smtp" else pop3}
            assert all(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for sock in b.slots)
        # every slot accepts: a connection reaches one of them
        with socket.create_connection(("127.0.0.1", smtp), timeout=5):
            pass
        assert [service for service, _ in slot_sockets(bound, 2)] == ["smtp", "pop3"]
    finally:
        close_all(bound)


def test_port_zero_puts_every_slot_on_the_port_the_first_got() -> None:
    bound = bind_services(settings(["127.0.0.1:0"]), 2)
    try:
        [group] = bound
        assert len({sock.getsockname()[1] for sock in group.slots}) == 1
    finally:
        close_all(bound)


def test_an_address_in_use_fails_naming_it_and_leaves_nothing_bound() -> None:
    free, taken = free_port(), free_port()
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even one that would share
        other.bind(("127.0.0.1", taken))
        other.listen()
        with pytest.raises(OSError, match=rf"pop3 on 127.0.0.1:{taken}"):
            bind_services(settings([f"127.0.0.1:{free}"], [f"127.0.0.1:{taken}"]), 2)
    with socket.socket() as again:  # the smtp sockets bound before the failure were closed
        again.bind(("127.0.0.1", free))


def test_fd_spec_round_trip_and_bad_specs() -> None:
    bound = bind_services(settings(["127.0.0.1:0", "127.0.0.1:0"]), 1)
    try:
        pairs = slot_sockets(bound, 0)
        spec = fd_spec(pairs)
        assert spec == [f"smtp={sock.fileno()}" for _, sock in pairs]
        for bad in (["smtp"], ["imap=3"], ["smtp=x"]):
            with pytest.raises(ValueError):
                parse_fd_spec(bad)
        # parse_fd_spec takes ownership of the descriptors: give it duplicates
        dups = [f"smtp={socket.dup(sock.fileno())}" for _, sock in pairs]
        parsed = parse_fd_spec(dups)
        assert [s.getsockname() for s in parsed["smtp"]] == [s.getsockname() for _, s in pairs]
        for sock in parsed["smtp"]:
            sock.close()
    finally:
        close_all(bound)


def received(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(2048, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return out


def test_channel_sends_one_datagram_per_request(tmp_path: Path) -> None:
    runner_end, workers_end = request_pair()
    with runner_end, workers_end:
        channel = RunnerChannel(workers_end, QueueStore(tmp_path))
        channel.wake("abc123")
        channel.wake()
        assert channel.flush("Example.ORG", subdomains=True) == 0  # nothing waits: no request
        assert received(runner_end) == [b"wake abc123", b"scan"]


def test_channel_drops_when_full_and_asks_for_a_scan_after(tmp_path: Path) -> None:
    runner_end, workers_end = request_pair()
    with runner_end, workers_end:
        channel = RunnerChannel(workers_end, QueueStore(tmp_path))
        sent = 0
        while not channel._missed:  # the runner reads nothing: the buffer fills, never blocks
            channel.wake(f"id{sent}")
            sent += 1
            assert sent < 1_000_000
        got = received(runner_end)
        assert got == [f"wake id{n}".encode() for n in range(len(got))]
        assert len(got) == sent - 1  # the last one was dropped
        channel.wake("later")
        assert received(runner_end) == [b"scan", b"wake later"]
        assert not channel._missed
