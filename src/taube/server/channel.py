"""A worker's way to the queue runner: request datagrams on a socket every worker shares.

The supervisor makes one ``AF_UNIX``/``SOCK_DGRAM`` socket pair: the queue runner reads one end
(``--requests-fd``, delivery/process.py), every worker inherits the other. A request is one
datagram holding one line of the runner's request grammar (``wake <id>``, ``scan``,
``flush <domain|*> <0|1>``), so requests from several processes never interleave, and a wake-up
after a commit costs the worker a single non-blocking ``send`` with no hop through the
supervisor. Both ends stay open in the supervisor, so a restarted worker or runner finds them.

When the runner falls behind and the socket's buffer is full the request is dropped rather than
blocking a session; the next request that gets through is preceded by a ``scan``, and the
runner's periodic scan (``[queue] scan_interval``) finds the mail in any case.
"""

from __future__ import annotations

import logging
import socket

from ..delivery.process import MAX_LINE, count_pending, flush_request, wake_request
from ..queue.store import QueueStore

__all__ = ["RunnerChannel", "request_pair"]

log = logging.getLogger("taube.server")

# Room for bursts while the runner is busy: the kernel caps it at twice net.core.wmem_max.
SEND_BUFFER = 1 << 20


def request_pair() -> tuple[socket.socket, socket.socket]:
    """(runner's end, workers' end). The workers' end is non-blocking: that flag belongs to the
    open file every worker shares, and no worker may ever wait on the runner."""
    runner_end, workers_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    workers_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    workers_end.setblocking(False)
    return runner_end, workers_end


class RunnerChannel:
    """The sessions' ``QueueControl`` (net/services.py) in a worker process."""

    def __init__(self, sock: socket.socket, store: QueueStore) -> None:
        self._sock = sock
        self.store = store
        self._missed = False  # a request was dropped: say "scan" with the next one

    def wake(self, queue_id: str | None = None) -> None:
        """Safe from any thread: one ``send`` on a datagram socket, no event loop involved."""
        self._send(wake_request(queue_id))

    def flush(self, domain: str | None, *, subdomains: bool = False) -> int:
        count = count_pending(self.store, domain, subdomains)
        if count:
            self._send(flush_request(domain, subdomains))
        return count

    def _send(self, line: str) -> None:
        if self._missed and self._put(wake_request(None).encode("ascii")):
            self._missed = False
        if not self._put(line.encode("ascii", "replace")[:MAX_LINE]):
            self._missed = True

    def _put(self, datagram: bytes) -> bool:
        try:
            self._sock.send(datagram, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError as e:  # the supervisor holds the other end: only a bug gets here
            log.error("cannot reach the queue runner: %s", e)
            return False
        return True
