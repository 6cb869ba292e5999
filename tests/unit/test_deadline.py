"""One timer per session for its read deadlines: a read past its end is cut off, reads that end
in time move the timer on, a shutdown's cancellation is never taken for a timeout, and a
closed deadline leaves no timer behind. Run on asyncio and on uvloop when it is installed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from taube.net.deadline import ReadDeadline

try:
    import uvloop
except ImportError:  # the optional extra
    uvloop = None

LOOPS = ["asyncio"] + (["uvloop"] if uvloop is not None else [])


def run(loop: str, main: Callable[[], Awaitable[None]]) -> None:
    if loop == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())


async def read(deadline: ReadDeadline, seconds: float, data: asyncio.Future[bytes]) -> bytes | None:
    """What a session's read does: None on its own timeout."""
    deadline.start(seconds)
    try:
        return await data
    except asyncio.CancelledError:
        if not deadline.expired():
            raise
        return None
    finally:
        deadline.stop()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_read_past_its_end_times_out_and_the_next_gets_a_fresh_deadline(loop: str) -> None:
    async def main() -> None:
        deadline = ReadDeadline()
        never: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        assert await read(deadline, 0.05, never) is None
        ready: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, ready.set_result, b"QUIT\r\n")
        assert await read(deadline, 0.5, ready) == b"QUIT\r\n"  # not cut off by the old one
        deadline.close()
    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_reads_that_end_in_time_keep_the_session_alive_past_the_first_deadline(loop: str) -> None:
    """Each read ends well within its 0.2 s, together they last longer than one: the timer set
    by the first read finds later reads under way and waits on."""
    async def main() -> None:
        running = asyncio.get_running_loop()
        deadline = ReadDeadline()
        began = running.time()
        reads = 0
        while running.time() - began < 0.5:
            data: asyncio.Future[bytes] = running.create_future()
            running.call_later(0.02, data.set_result, b"NOOP\r\n")
            assert await read(deadline, 0.2, data) == b"NOOP\r\n"
            reads += 1
        assert reads > 1
        async with asyncio.timeout(10):  # and the read that stalls is still cut off
            assert await read(deadline, 0.2, running.create_future()) is None
        deadline.close()
    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_shorter_deadline_than_the_timer_is_kept(loop: str) -> None:
    async def main() -> None:
        running = asyncio.get_running_loop()
        deadline = ReadDeadline()
        quick: asyncio.Future[bytes] = running.create_future()
        running.call_soon(quick.set_result, b"x")
        assert await read(deadline, 3600, quick) == b"x"  # arms the timer an hour out
        never: asyncio.Future[bytes] = running.create_future()
        async with asyncio.timeout(10):  # a guard, should the short deadline be lost
            assert await read(deadline, 0.05, never) is None
        deadline.close()
    run(loop, main)


async def session_reading(seconds: float) -> tuple[asyncio.Task[bytes | None], ReadDeadline]:
    """A session's task, started and now waiting in a read that never gets data."""
    running = asyncio.get_running_loop()
    deadlines: list[ReadDeadline] = []

    async def session() -> bytes | None:
        deadlines.append(ReadDeadline())
        return await read(deadlines[0], seconds, running.create_future())

    task = running.create_task(session())
    await asyncio.sleep(0)  # let it start reading
    return task, deadlines[0]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_cancellation_from_elsewhere_is_not_a_timeout(loop: str) -> None:
    async def main() -> None:
        task, deadline = await session_reading(3600)
        task.cancel()  # a shutdown
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline.close()
    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_shutdown_at_the_moment_of_the_timeout_still_stops_the_session(loop: str) -> None:
    """Both cancel the task before it runs again: the shutdown's cancellation is not withdrawn."""
    async def main() -> None:
        task, deadline = await session_reading(0)  # a deadline that has passed already
        deadline._wake()  # the timer's callback, as the loop would run it ...
        task.cancel()  # ... and the listener's, in the same iteration
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline.close()
    run(loop, main)


def test_close_cancels_the_timer_so_an_ended_session_is_not_kept() -> None:
    async def main() -> None:
        running = asyncio.get_running_loop()
        deadline = ReadDeadline()
        ready: asyncio.Future[bytes] = running.create_future()
        ready.set_result(b"x")
        await read(deadline, 600, ready)
        timer = deadline._timer
        assert timer is not None and not timer.cancelled()
        deadline.close()
        assert timer.cancelled() and deadline._timer is None
    asyncio.run(main())
