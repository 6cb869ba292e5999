"""What the state shared by worker processes costs per call: an open/close pair of connection
counts, a failed login (:meth:`auth_failed`) and a login check (:meth:`auth_blocked`), on the
shared table (:mod:`taube.sharedstate_table`) with one and with several processes calling at
once, next to the single-process :class:`~taube.sharedstate.LocalState` and to the bare lock
(two ``flock`` calls) that every table call pays.

Each measurement is the median of ``--runs`` runs (with several processes: of every process's
result in every run); the processes start together on a barrier, each with its own worker id,
and count the same client addresses. Wall time per call, so a loaded machine shows: the load
average is printed with the results.

Usage: shared_state.py [--calls 20000] [--runs 5] [--processes 1,2] [--clients 250]
"""

from __future__ import annotations

import argparse
import fcntl
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taube.sharedstate import LocalState, SharedState, create_shared, open_shared

CASES = ("open/close pair", "auth_failed", "auth_blocked")


def measure(state: SharedState, calls: int, clients: list[str]) -> dict[str, float]:
    """Microseconds per call of each case, on ``state``."""
    n = len(clients)
    result = {}
    start = time.perf_counter()
    for i in range(calls):
        client = clients[i % n]
        state.open_connection(client, total_limit=1_000_000, per_client_limit=1000, service="smtp")
        state.close_connection(client, service="smtp")
    result["open/close pair"] = (time.perf_counter() - start) / calls * 1e6
    start = time.perf_counter()
    for i in range(calls):
        state.auth_failed(clients[i % n], 900.0)
    result["auth_failed"] = (time.perf_counter() - start) / calls * 1e6
    start = time.perf_counter()
    for i in range(calls):
        state.auth_blocked(clients[i % n], 900.0, 10)
    result["auth_blocked"] = (time.perf_counter() - start) / calls * 1e6
    return result


def bare_lock(path: Path, calls: int) -> float:
    """Microseconds per flock(LOCK_EX) + flock(LOCK_UN) on a file of its own."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        start = time.perf_counter()
        for _ in range(calls):
            fcntl.flock(fd, fcntl.LOCK_EX)
            fcntl.flock(fd, fcntl.LOCK_UN)
        return (time.perf_counter() - start) / calls * 1e6
    finally:
        os.close(fd)


def worker(data_dir: str, worker_id: int, calls: int, clients: list[str],
           barrier: Any, results: Any) -> None:
    state = open_shared(Path(data_dir), worker_id=worker_id)
    barrier.wait()
    results.put(measure(state, calls, clients))
    state.close()


def shared_run(processes: int, calls: int, clients: list[str]) -> list[dict[str, float]]:
    """One run of ``processes`` processes on a new table; each process's results."""
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        supervisor = create_shared(Path(tmp), workers=processes)
        barrier, results = ctx.Barrier(processes), ctx.Queue()
        children = [ctx.Process(target=worker, args=(tmp, k, calls, clients, barrier, results))
                    for k in range(processes)]
        for child in children:
            child.start()
        found = [results.get(timeout=600) for _ in children]
        for child in children:
            child.join()
        if any(child.exitcode for child in children):
            raise SystemExit("a benchmark process failed")
        if supervisor.connection_count():
            raise SystemExit("connections still counted after every close")
        supervisor.close()
    return found


def release_time(workers: int, connections: int) -> float:
    """Milliseconds for release_worker on a table of the default size with ``connections``
    (distinct clients) counted for the worker being released."""
    with tempfile.TemporaryDirectory() as tmp:
        supervisor = create_shared(Path(tmp), workers=workers)
        state = open_shared(Path(tmp), worker_id=0)
        for i in range(connections):
            state.open_connection(f"2001:db8::{i:x}", total_limit=connections, per_client_limit=1,
                                  service="smtp")
        state.close()  # as if it had died: its connections stay counted
        start = time.perf_counter()
        supervisor.release_worker(0)
        elapsed = (time.perf_counter() - start) * 1e3
        assert supervisor.connection_count() == 0
        supervisor.close()
    return elapsed


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {case: statistics.median(r[case] for r in runs) for case in CASES}


def timed(fn: Callable[[], dict[str, float]], runs: int) -> dict[str, float]:
    return median_of([fn() for _ in range(runs)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000, help="calls per case and run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--processes", default="1,2", help="process counts, comma-separated")
    parser.add_argument("--clients", type=int, default=250, help="distinct client addresses")
    args = parser.parse_args()
    clients = [f"192.0.2.{i % 250}" if i < 250 else f"2001:db8::{i:x}" for i in range(args.clients)]
    print(f"CPUs: {os.cpu_count()}, load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"calls per case and run: {args.calls}, runs: {args.runs}, clients: {args.clients}")
    print(f"{'backend':<28}" + "".join(f"{case:>18}" for case in CASES) + "   (us per call, median)")
    local = timed(lambda: measure(LocalState(), args.calls, clients), args.runs)
    print(f"{'LocalState, 1 process':<28}" + "".join(f"{local[c]:18.2f}" for c in CASES))
    for processes in (int(p) for p in args.processes.split(",")):
        runs = [r for _ in range(args.runs) for r in shared_run(processes, args.calls, clients)]
        shared = median_of(runs)
        print(f"{f'shared table, {processes} proc.':<28}" + "".join(f"{shared[c]:18.2f}" for c in CASES))
    with tempfile.TemporaryDirectory() as tmp:
        lock = statistics.median(bare_lock(Path(tmp) / "lock", args.calls) for _ in range(args.runs))
    print(f"bare lock (2 flock calls):  {lock:8.2f} us")
    print(f"release_worker, 10000 connections counted: {release_time(2, 10_000):8.1f} ms")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
