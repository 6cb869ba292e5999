"""Memory of a taube server: per idle SMTP connection, and with messages from 1 KiB to 50 MiB.

Idle connections: a fresh server per level (2000 and 10,000 by default); the bench opens that
many SMTP connections from loopback (500 at a time), each reads its 220 greeting and then says
nothing, as an idle or slow client does. With all of them held, the resident memory of all the
server's processes (supervisor, workers, queue runner) is read from /proc, and 20 new clients,
one after another, measure connect-to-220. Per connection = (RSS held - RSS before) / connections.
The bench raises its own RLIMIT_NOFILE first (the server inherits it) and reads the server's from
``/proc/PID/limits``: a server that cannot open enough files shows as refused connections.

Message sizes: a fresh server with ``max_message_size`` raised to 64 MiB gets one message of
each size in turn, 1 KiB, 1 MiB, 10 MiB and 50 MiB (after an untimed 1 KiB one, so that what
the first transaction loads is not counted), one connection each; after each, the
processes' RSS and the sum of their peaks (VmHWM). A server that streams bodies stays flat (the
target: within 10 MB from 1 KiB to 50 MiB). The Maildir must then hold the four messages, whole.

Usage: memory_bench.py [--connections 2000,10000] [--sizes 1024,1048576,10485760,52428800]
                       [--loops uvloop,asyncio] [--workers 1,2] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import (RESULTS_DIR, add_json, add_taube_options, conditions, exit_status, finish,
                      fresh_directory, int_list, machine_now, new_parser, print_skipped,
                      print_table, run_async, run_smtp_load, taube_variants, write_results)
from procstats import descendants, open_files_limit, raise_open_files_limit, tree_memory
from servers import HOST, ServerUnavailable, TaubeServer, Variant

RESULTS = RESULTS_DIR / "memory-latest.json"
OPEN_AT_ONCE = 500  # connections being opened at the same time
PROBES = 20  # new clients timed while the idle ones are held
CONNECT_TIMEOUT = 30.0
MIB = 2**20
WARM_UP_SIZE = 1024


class MemoryServer(TaubeServer):
    """taube with room for many connections and large messages, only [smtp] listening."""

    max_connections = 100000

    def config_text(self) -> str:
        return super().config_text() + f"max_message_size = {64 * MIB}\n"


@contextmanager
def running(variant: Variant) -> Iterator[tuple[TaubeServer, int]]:
    """A fresh MemoryServer of ``variant`` and its PID; stopped and removed afterwards."""
    with fresh_directory("taube-memory-bench-") as workdir:
        server = variant.apply(MemoryServer(workdir))
        assert isinstance(server, TaubeServer)
        server.start()
        try:
            assert server.root_pid is not None
            yield server, server.root_pid
        finally:
            server.stop()


@dataclass
class IdleMeasurement:
    implementation: str
    connections: int
    opened: int = 0
    rss_before_mb: float = 0.0
    rss_held_mb: float = 0.0
    greeting_ms: list[float] = field(default_factory=list)
    server_open_files_limit: list[int | None] = field(default_factory=list)
    event_loop: str | None = None
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def per_connection_kib(self) -> float | None:
        if not self.opened:
            return None
        return (self.rss_held_mb - self.rss_before_mb) * 1024 / self.opened

    @property
    def greeting_median_ms(self) -> float | None:
        return statistics.median(self.greeting_ms) if self.greeting_ms else None

    @property
    def greeting_max_ms(self) -> float | None:
        return max(self.greeting_ms) if self.greeting_ms else None


@dataclass
class SizeMeasurement:
    implementation: str
    size: int
    accepted: bool = False
    rss_mb: float = 0.0
    peak_rss_mb: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)


async def open_idle(port: int, count: int, errors: dict[str, int]) -> list[asyncio.StreamWriter]:
    """``count`` connections that have read their greeting and say nothing more."""
    gate = asyncio.Semaphore(OPEN_AT_ONCE)

    async def one() -> asyncio.StreamWriter | None:
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port),
                                                        CONNECT_TIMEOUT)
                line = await asyncio.wait_for(reader.readline(), CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                kind = type(exc).__name__
                errors[kind] = errors.get(kind, 0) + 1
                return None
            if not line.startswith(b"220"):
                errors[f"greeting {line[:3]!r}"] = errors.get(f"greeting {line[:3]!r}", 0) + 1
                writer.close()
                return None
            return writer

    opened = await asyncio.gather(*(one() for _ in range(count)))
    return [w for w in opened if w is not None]


async def time_greetings(port: int, probes: int) -> list[float]:
    """Connect-to-220 of new clients, one after another, in milliseconds."""
    times = []
    for _ in range(probes):
        began = time.perf_counter()
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port),
                                                CONNECT_TIMEOUT)
        await asyncio.wait_for(reader.readline(), CONNECT_TIMEOUT)
        times.append(1000 * (time.perf_counter() - began))
        writer.write(b"QUIT\r\n")
        writer.close()
    return times


def settled_rss(pid: int) -> float:
    """The tree's RSS in MB once two readings 0.2 s apart agree within 1 MB (start-up and the
    last connections' buffers settle), at most 5 s."""
    deadline = time.monotonic() + 5
    last = tree_memory(pid).rss_mb
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = tree_memory(pid).rss_mb
        if abs(now - last) < 1:
            return now
        last = now
    return last


def measure_idle(variant: Variant, connections: int) -> IdleMeasurement:
    m = IdleMeasurement(variant.name, connections)
    with running(variant) as (server, pid):
        m.server_open_files_limit = [open_files_limit(p) for p in descendants(pid)]
        m.rss_before_mb = settled_rss(pid)

        async def hold() -> None:
            writers = await open_idle(server.port, connections, m.errors)
            m.opened = len(writers)
            m.rss_held_mb = await asyncio.to_thread(settled_rss, pid)
            m.greeting_ms = await time_greetings(server.port, PROBES)
            for writer in writers:
                writer.close()

        run_async(hold())
    m.event_loop = server.event_loop()
    return m


def measure_sizes(variant: Variant, sizes: list[int]) -> list[SizeMeasurement]:
    found = []
    with running(variant) as (server, pid):
        # an untimed first message: what the first transaction loads lazily (modules,
        # thread pool) is not the message size's doing
        warm_up = run_smtp_load("loadgen", server.port, 1, 1, WARM_UP_SIZE).accepted or 0
        for size in sizes:
            m = SizeMeasurement(variant.name, size)
            outcome = run_smtp_load("loadgen", server.port, 1, 1, size)
            m.accepted, m.errors = outcome.accepted == 1, outcome.errors
            m.rss_mb = settled_rss(pid)
            m.peak_rss_mb = tree_memory(pid).peak_rss_mb
            found.append(m)
        server.stop()  # before the Maildir is read: nothing is still being written
        stored = sorted(f.stat().st_size for f in Path(server.maildir_new()).iterdir())
    sent = sorted([WARM_UP_SIZE] * warm_up + [m.size for m in found if m.accepted])
    # each stored file is the message plus taube's trace header fields, never less
    if len(stored) != len(sent) or any(s < n or s > n + 4096 for s, n in zip(stored, sent)):
        found[-1].errors[f"Maildir holds sizes {stored} for {sent}"] = 1
    return found


# --- tables ------------------------------------------------------------------------------------
def idle_cells(m: IdleMeasurement) -> list[str]:
    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    limits = sorted({x for x in m.server_open_files_limit if x is not None})
    return [m.implementation, str(m.connections), str(m.opened), f"{m.rss_before_mb:.0f}",
            f"{m.rss_held_mb:.0f}", fmt(m.per_connection_kib, ".1f"),
            fmt(m.greeting_median_ms, ".1f"), fmt(m.greeting_max_ms, ".1f"),
            ",".join(map(str, limits)) or "-",
            f"{sum(m.errors.values())} error(s)" if m.errors else ""]


IDLE_HEADERS = ["implementation", "idle connections", "opened", "RSS before MB", "RSS held MB",
                "KiB per connection", "new client 220 ms (median)", "max ms",
                "server NOFILE", "notes"]


def size_cells(m: SizeMeasurement, first: SizeMeasurement) -> list[str]:
    return [m.implementation, f"{m.size / MIB:g} MiB" if m.size >= MIB else f"{m.size} B",
            "yes" if m.accepted else "NO", f"{m.rss_mb:.0f}", f"{m.peak_rss_mb:.0f}",
            f"{m.peak_rss_mb - first.peak_rss_mb:+.1f}",
            "; ".join(m.errors) if m.errors else ""]


SIZE_HEADERS = ["implementation", "message", "250", "RSS after MB", "peak RSS MB (sum of VmHWM)",
                "peak growth since 1st MB", "notes"]


def parse_args() -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.add_argument("--connections", type=int_list, default=[2000, 10000],
                        help="idle connection levels (default 2000,10000)")
    parser.add_argument("--sizes", type=int_list, default=[1024, MIB, 10 * MIB, 50 * MIB],
                        help="message sizes in bytes (default 1 KiB, 1, 10, 50 MiB)")
    add_taube_options(parser)
    add_json(parser, RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.connections, args.sizes = [500], [1024, MIB, 10 * MIB]
    args.runs = 1
    args.variants = taube_variants(args)
    return args


def main() -> int:
    args = parse_args()
    limit = raise_open_files_limit(2 * max(args.connections) + 1000)
    header = conditions(args, connections=args.connections, sizes=args.sizes,
                        bench_open_files_limit=limit)
    print(f"{header['date']}: memory, idle connections {args.connections}, message sizes "
          f"{args.sizes}, {machine_now(header)}; open files limit {limit}", file=sys.stderr)
    skipped: dict[str, str] = {}
    idle: list[IdleMeasurement] = []
    sizes: list[SizeMeasurement] = []
    for variant in args.variants:
        try:
            for connections in args.connections:
                idle.append(measure_idle(variant, connections))
                print(f"{variant.name}: {idle_cells(idle[-1])}", file=sys.stderr, flush=True)
            measured = measure_sizes(variant, args.sizes)
            sizes += measured
            for m in measured:
                print(f"{variant.name}: {size_cells(m, measured[0])}", file=sys.stderr,
                      flush=True)
        except ServerUnavailable as exc:
            skipped[variant.name] = str(exc)
            print(f"skipping {variant.name}: {exc}", file=sys.stderr, flush=True)
    finish(header)
    print_table("Idle SMTP connections: memory of all taube processes, new client's greeting",
                IDLE_HEADERS, [idle_cells(m) for m in idle], {"implementation", "notes"}, 150)
    firsts = {m.implementation: m for m in reversed(sizes)}
    print_table("Message size and resident memory (one message at a time, one connection)",
                SIZE_HEADERS, [size_cells(m, firsts[m.implementation]) for m in sizes],
                {"implementation", "notes"}, 120)
    print_skipped(skipped)
    write_results(args.json, header, skipped, [*idle, *sizes], [], lambda m: (
        {"per_connection_kib": m.per_connection_kib, "greeting_median_ms": m.greeting_median_ms}
        if isinstance(m, IdleMeasurement) else {}))
    failed = any(not m.accepted or m.errors for m in sizes)
    if failed:
        print("FAILURE: a message was refused or not stored whole", file=sys.stderr)
    return exit_status(failed, skipped)


if __name__ == "__main__":
    sys.exit(main())
