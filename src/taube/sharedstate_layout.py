"""The file behind :class:`taube.sharedstate_table.SharedTable`: its binary layout, creation and
the keys of its slots.

One file, mapped by every process of a server, in four regions (each starting on a page):

======================  ===================================================================
header                  magic, version, geometry, the hash key, the names of the services
service totals          per service, one 32-bit count per worker: open connections
connections             buckets of :data:`WAYS` slots: per (service, client address), one
                        32-bit count per worker (so that a dead worker's share can be taken
                        back: :meth:`~taube.sharedstate_table.SharedTable.release_worker`)
failed logins           buckets of :data:`WAYS` slots: per client address, a ring of the
                        times of its last ``ring`` failures
POP3 logins             buckets of :data:`WAYS` slots: per client address, its last login
======================  ===================================================================

A bucket starts with the 64-bit fingerprints of its slots (0: the slot is free), so that one
64-byte read finds the candidates; the slot itself holds the whole key, compared before use, so
that two clients never share a slot, whatever their fingerprints. The fingerprint and the choice
of bucket come from BLAKE2b keyed with a random key of the table (RFC 7693): someone who picks
addresses cannot aim them all at one bucket.

The table is not durable and need not be: every server start makes a new one
(:func:`create_table`), and what it holds means nothing once the processes that counted into
it are gone.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
from pathlib import Path

__all__ = ["KEY", "MAX_SERVICES", "WAYS", "Layout", "create_table", "fingerprint", "pack_key",
           "read_layout"]

MAGIC = b"TAUBESS\x01"
VERSION = 1
PAGE = 4096
WAYS = 8  # slots per bucket: its fingerprints are one 64-byte read, one cache line
MAX_SERVICES = 16  # "smtp", "pop3", ...: connection limits are counted per service
MAX_WORKERS = 1024

HEADER = struct.Struct("<8sIIIII16s")  # magic, version, workers, connection buckets,
#                                        client buckets, ring size, hash key
SERVICE = struct.Struct("16p")  # a service name: a length byte and up to 15 bytes
SERVICES_AT = 64
KEY = struct.Struct("64p")  # a slot's key: a length byte and up to 63 bytes
FPS = struct.Struct("<8Q")  # a bucket's fingerprints
TIMES = struct.Struct("<8d")  # a bucket's times (newest failure, POP3 login): the eviction order
COUNT = struct.Struct("<I")
TIME = struct.Struct("<d")
HEAD = struct.Struct("<Q")  # failures ever recorded in a slot: the ring's next position
HASHED = b"\xff"  # starts a key too long for a slot (0xff never occurs in UTF-8)


def _page(offset: int) -> int:
    return -(-offset // PAGE) * PAGE


class Layout:
    """Where everything is, from the geometry in the header."""

    __slots__ = ("workers", "conn_buckets", "client_buckets", "ring", "counts", "times",
                 "totals_at", "conn_at", "conn_slot", "conn_bucket", "fail_at", "fail_slot",
                 "fail_bucket", "pop_at", "pop_bucket", "size")

    def __init__(self, workers: int, conn_buckets: int, client_buckets: int, ring: int) -> None:
        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"workers must be 1 to {MAX_WORKERS}, not {workers}")
        if conn_buckets < 1 or client_buckets < 1 or ring < 1:
            raise ValueError("the table needs at least one slot of each kind")
        self.workers = workers
        self.conn_buckets = conn_buckets
        self.client_buckets = client_buckets
        self.ring = ring
        self.counts = struct.Struct(f"<{workers}I")  # one count per worker
        self.times = struct.Struct(f"<{ring}d")  # one ring of failure times
        self.totals_at = PAGE
        self.conn_slot = KEY.size + 4 * workers
        self.conn_bucket = FPS.size + WAYS * self.conn_slot
        self.conn_at = _page(self.totals_at + MAX_SERVICES * 4 * workers)
        self.fail_slot = KEY.size + HEAD.size + 8 * ring
        self.fail_bucket = FPS.size + TIMES.size + WAYS * self.fail_slot
        self.fail_at = _page(self.conn_at + conn_buckets * self.conn_bucket)
        self.pop_bucket = FPS.size + TIMES.size + WAYS * KEY.size
        self.pop_at = _page(self.fail_at + client_buckets * self.fail_bucket)
        self.size = _page(self.pop_at + client_buckets * self.pop_bucket)

    def total_at(self, service: int) -> int:
        """The per-worker counts of ``service``'s open connections."""
        return self.totals_at + service * 4 * self.workers


def create_table(path: Path, *, workers: int, connections: int, clients: int, ring: int) -> Layout:
    """Make a new, empty table at ``path`` (replacing any old one) for ``workers`` worker ids,
    room for ``connections`` (service, client) pairs with open connections, and ``clients``
    addresses with failed logins and as many with POP3 logins; ``ring``: failures kept per
    address. Written under a temporary name and renamed, so that an opener never sees half a
    header. No fsync: the table is remade at every start (see the module docstring)."""
    layout = Layout(workers, -(-connections // WAYS), -(-clients // WAYS), ring)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, layout.size)  # sparse: pages are allocated as they are first written
        os.pwrite(fd, HEADER.pack(MAGIC, VERSION, workers, layout.conn_buckets,
                                  layout.client_buckets, ring, secrets.token_bytes(16)), 0)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    return layout


def read_layout(data: bytes | memoryview, path: Path) -> tuple[Layout, bytes]:
    """The layout and hash key of the table whose first bytes are ``data``."""
    if len(data) < HEADER.size:
        raise ValueError(f"{path}: not a taube shared state table (too short)")
    magic, version, workers, conn_buckets, client_buckets, ring, key = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"{path}: not a taube shared state table of version {VERSION}")
    return Layout(workers, conn_buckets, client_buckets, ring), key


def pack_key(text: str, prefix: bytes = b"") -> bytes:
    """The 64-byte slot key of ``text`` (a client address) after ``prefix``. Longer keys (no
    address is: IPv6 with a zone is at most 61 characters) are replaced by their BLAKE2b-256
    digest, so that they still fit and still differ."""
    raw = prefix + text.encode("utf-8", "surrogateescape")
    if len(raw) >= KEY.size:
        raw = HASHED + hashlib.blake2b(raw, digest_size=32).digest()
    return KEY.pack(raw)


def fingerprint(key: bytes, hash_key: bytes, buckets: int) -> tuple[int, int, int]:
    """A slot key's fingerprint (never 0, which marks a free slot) and its two buckets (the
    "power of two choices": a new key goes to the emptier one, which keeps every bucket far from
    full until the table nearly is)."""
    low, high = struct.unpack("<QQ", hashlib.blake2b(key, digest_size=16, key=hash_key).digest())
    return low or 1, high % buckets, (high >> 32) % buckets
