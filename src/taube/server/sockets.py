"""The listening sockets of every service, bound once by the supervisor for all its workers.

Each listen address gets one socket per worker slot, all bound to the same address with
``SO_REUSEPORT``: the kernel spreads new connections over the slots by a hash of the client's
address and port, so each worker accepts from its own queue (no thundering herd, no worker that
wakes first taking a whole burst). The supervisor keeps every socket open for its whole life and
hands slot *i*'s sockets to worker *i* and to its replacement: connections that arrive while a
worker is being restarted wait in that slot's queue instead of being refused or lost.

Binding one socket without ``SO_REUSEPORT`` first proves the address is free: a second
``taube serve`` on the same port would otherwise join the group silently and take half the
connections.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..config import Settings, parse_listen

__all__ = ["BACKLOG", "SERVICES", "Bound", "bind_services", "close_all", "fd_spec", "parse_fd_spec",
           "slot_sockets"]

BACKLOG = 512  # per slot, as the single process's listeners
SERVICES = ("smtp", "submission", "smtps", "pop3", "pop3s")


@dataclass(frozen=True, slots=True)
class Bound:
    """One listen address of one service: ``slots[i]`` is worker *i*'s socket."""

    service: str
    address: str
    slots: tuple[socket.socket, ...]


def bind_services(settings: Settings, workers: int) -> list[Bound]:
    """Every listen address of every service, ``workers`` sockets each. OSError (naming the
    service and address) if one cannot be bound; then nothing stays bound."""
    bound: list[Bound] = []
    try:
        for service in SERVICES:
            for address in getattr(settings, service).listen:
                try:
                    for group in _bind_address(address, workers):
                        bound.append(Bound(service, address, group))
                except OSError as e:
                    raise OSError(e.errno, f"cannot listen for {service} on {address}: "
                                           f"{e.strerror or e}") from e
    except BaseException:
        close_all(bound)
        raise
    return bound


def _bind_address(address: str, workers: int) -> Iterator[tuple[socket.socket, ...]]:
    """The groups for one configured address (a host name may stand for several addresses,
    as asyncio's create_server binds them all)."""
    host, port = parse_listen(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_UNSPEC
    infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    seen = set()
    for fam, kind, proto, _, sockaddr in infos:
        if (fam, sockaddr) in seen:
            continue
        seen.add((fam, sockaddr))
        if port != 0:
            _probe(fam, kind, proto, sockaddr)
        group: list[socket.socket] = []
        try:
            for _ in range(workers):
                sock = _listening(fam, kind, proto, sockaddr)
                group.append(sock)
                # port 0: the kernel chose one for the first socket; the others join it there
                sockaddr = (sockaddr[0], sock.getsockname()[1], *sockaddr[2:])
        except BaseException:
            for sock in group:
                sock.close()
            raise
        yield tuple(group)


def _probe(family: int, kind: int, proto: int, sockaddr: tuple) -> None:  # type: ignore[type-arg]
    """Raise EADDRINUSE if anybody listens on ``sockaddr`` already, SO_REUSEPORT or not."""
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind(sockaddr)


def _listening(family: int, kind: int, proto: int, sockaddr: tuple) -> socket.socket:  # type: ignore[type-arg]
    sock = socket.socket(family, kind, proto)
    try:
        # SO_REUSEADDR as asyncio sets it (a restart need not wait for TIME_WAIT to pass)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # as asyncio: an IPv6 address does not also take the IPv4 port
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def slot_sockets(bound: Sequence[Bound], slot: int) -> list[tuple[str, socket.socket]]:
    """(service, socket) of every listener for worker ``slot``."""
    return [(b.service, b.slots[slot]) for b in bound]


def fd_spec(pairs: Sequence[tuple[str, socket.socket]]) -> list[str]:
    """Command-line arguments naming the inherited sockets: ``service=fd`` each."""
    return [f"{service}={sock.fileno()}" for service, sock in pairs]


def parse_fd_spec(specs: Sequence[str]) -> dict[str, list[socket.socket]]:
    """The worker's side of :func:`fd_spec`: service -> its inherited listening sockets."""
    out: dict[str, list[socket.socket]] = {}
    for spec in specs:
        service, _, fd = spec.partition("=")
        if service not in SERVICES or not fd.isdigit():
            raise ValueError(f"bad listening socket {spec!r} (want service=fd)")
        out.setdefault(service, []).append(socket.socket(fileno=int(fd)))
    return out


def close_all(bound: Sequence[Bound]) -> None:
    for b in bound:
        for sock in b.slots:
            with contextlib.suppress(OSError):
                sock.close()
