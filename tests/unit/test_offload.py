"""net/offload.py: blocking work in threads of its own, outcomes back on the caller's loop,
several per wake-up of the loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from taube.net.offload import Offload

DEADLINE = 30.0


@pytest.fixture
def offload() -> Iterator[Offload]:
    pool = Offload(threads=4, name="test-offload")
    yield pool
    pool.close()


def test_results_and_errors_come_back_from_another_thread(offload: Offload) -> None:
    async def main() -> None:
        loop_thread = threading.get_ident()
        assert await asyncio.wait_for(offload.run(lambda a, b: (a + b, threading.get_ident()), 2, 3),
                                      DEADLINE) != (5, loop_thread)
        result, thread = await offload.run(lambda: (7, threading.get_ident()))
        assert result == 7 and thread != loop_thread

        def fail() -> None:
            raise OSError(28, "No space left on device")

        with pytest.raises(OSError, match="No space"):
            await asyncio.wait_for(offload.run(fail), DEADLINE)

    asyncio.run(main())


def test_many_calls_share_a_bounded_number_of_threads(offload: Offload) -> None:
    seen: set[int] = set()
    lock = threading.Lock()

    def work(n: int) -> int:
        with lock:
            seen.add(threading.get_ident())
        return n * n

    async def main() -> list[int]:
        return await asyncio.wait_for(asyncio.gather(*(offload.run(work, n) for n in range(200))), DEADLINE)

    assert asyncio.run(main()) == [n * n for n in range(200)]
    assert 1 <= len(seen) <= 4


def test_outcomes_that_arrive_together_wake_the_loop_once(offload: Offload,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ran = threading.Semaphore(0)

    def work(n: int) -> int:
        ran.release()
        return n

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        wakes: list[object] = []
        real = loop.call_soon_threadsafe

        def counting(callback, *args):  # type: ignore[no-untyped-def]
            wakes.append(callback)
            return real(callback, *args)

        monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
        futures = [offload.run(work, n) for n in range(8)]
        # The loop is busy (blocked here) while all eight finish: one wake-up collects them.
        for _ in range(8):
            assert ran.acquire(timeout=DEADLINE)
        deadline = loop.time() + DEADLINE
        while len(offload._done.get(loop, ())) < 8 and loop.time() < deadline:  # noqa: SLF001
            threading.Event().wait(0.001)  # still blocking the loop: the collect cannot run
        results = await asyncio.wait_for(asyncio.gather(*futures), DEADLINE)
        assert len(wakes) == 1
        return results

    assert asyncio.run(main()) == list(range(8))


def test_a_cancelled_caller_lets_the_work_finish(offload: Offload) -> None:
    release = threading.Event()
    finished = threading.Event()

    def work() -> str:
        release.wait(DEADLINE)
        finished.set()
        return "done"

    async def main() -> str:
        first = offload.run(work)
        first.cancel()
        release.set()
        # A later call is answered normally after the cancelled one's outcome was dropped.
        return await asyncio.wait_for(offload.run(lambda: "next"), DEADLINE)

    assert asyncio.run(main()) == "next"
    assert finished.wait(DEADLINE)


def test_each_loop_gets_its_own_results(offload: Offload) -> None:
    results: dict[int, list[int]] = {}

    def run_loop(k: int) -> None:
        async def main() -> list[int]:
            return await asyncio.wait_for(asyncio.gather(*(offload.run(lambda n=n: n + k) for n in range(20))),
                                          DEADLINE)
        results[k] = asyncio.run(main())

    threads = [threading.Thread(target=run_loop, args=(k,)) for k in (100, 200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    assert results == {100: list(range(100, 120)), 200: list(range(200, 220))}


def test_at_least_one_thread() -> None:
    with pytest.raises(ValueError):
        Offload(threads=0)
