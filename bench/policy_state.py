"""What the shared policy state costs per SMTP command: one rate-limit event
(:class:`taube.policy.rates.RateCounter`) and one greylisting decision
(:class:`taube.policy.greylist.GreylistDB`), each on its SQLite file in a temporary directory,
called directly and through the module's thread pool from an event loop, as the checks call
them; with ``--processes N`` as many processes count into the same files at once.

Usage: policy_state.py [--events 5000] [--processes 1]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

from taube.policy import greylist, rates


def direct(path: Path, events: int) -> tuple[float, float]:
    """Microseconds per rate event and per greylisting decision, called in this thread."""
    counter = rates.RateCounter(path / "rates.db")
    grey = greylist.GreylistDB(path / "greylist.db", delay=300, expiry=35 * 86400)
    start = time.perf_counter()
    for i in range(events):
        counter.hit("recipient", f"192.0.2.{i % 250}")
    middle = time.perf_counter()
    for i in range(events):
        grey.check(f"198.51.{i % 250}.0/24", "sender@example.org", f"r{i}@example.test")
    end = time.perf_counter()
    counter.close()
    grey.close()
    return (middle - start) / events * 1e6, (end - middle) / events * 1e6


async def pooled(path: Path, events: int) -> float:
    """Microseconds per rate event through the pool, from the event loop."""
    counter = rates.RateCounter(path / "rates.db")
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    for i in range(events):
        await loop.run_in_executor(rates.WORKERS, counter.hit, "message", f"192.0.2.{i % 250}")
    counter.close()
    return (time.perf_counter() - start) / events * 1e6


def worker(path: str, events: int) -> tuple[float, float]:
    return direct(Path(path), events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        if args.processes > 1:
            with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
                results = pool.starmap(worker, [(tmp, args.events)] * args.processes)
            rate = statistics.median(r[0] for r in results)
            grey = statistics.median(r[1] for r in results)
        else:
            rate, grey = direct(path, args.events)
        through_pool = asyncio.run(pooled(path, args.events))
    print(f"processes:                        {args.processes}")
    print(f"rate event, direct:               {rate:8.1f} us")
    print(f"rate event, through the pool:     {through_pool:8.1f} us")
    print(f"greylisting decision, direct:     {grey:8.1f} us")


if __name__ == "__main__":
    main()
