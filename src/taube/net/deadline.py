"""The read deadline of a session (RFC 5321 4.5.3.2's timeouts, RFC 1939 section 3's autologout
timer) with one timer for the whole session instead of one per read.

``async with asyncio.timeout(t)`` around every read schedules and cancels a timer each time: on
uvloop about 10 microseconds per command, a tenth of a POP3 RETR. Here a read only notes when it
must end (one clock reading); the single timer, armed by the first read, wakes at that moment,
and if reads came and went meanwhile it waits on until the current read's end. Only when it
finds the current read past its end does it cancel the session's task, as ``asyncio.timeout``
does, and :meth:`ReadDeadline.expired` then turns that cancellation into the timeout, unless
someone else cancelled the task too (the server shutting down wins).
"""

from __future__ import annotations

import asyncio

__all__ = ["ReadDeadline"]


class ReadDeadline:
    """Deadlines for the reads of the task that creates it: :meth:`start` before each read,
    :meth:`stop` after it, :meth:`expired` when the read raised CancelledError, :meth:`close`
    when the session ends (so the timer does not keep the session alive)."""

    __slots__ = ("_due", "_expired", "_loop", "_task", "_timer", "_timer_due")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "a read deadline belongs to a task"
        self._task = task
        self._due: float | None = None  # when the read under way must end; None: no read
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0  # when the timer wakes
        self._expired = False

    def start(self, seconds: float) -> None:
        """A read begins; it may last ``seconds``."""
        due = self._loop.time() + seconds
        self._due = due
        if self._timer is None or self._timer_due > due:  # none yet, or it would wake too late
            self._arm(due)

    def stop(self) -> None:
        """The read is over (whatever its outcome); the timer stays for the next one."""
        self._due = None

    def expired(self) -> bool:
        """After the read raised CancelledError: True if that was this deadline alone (the
        cancellation is then withdrawn), False if it must go on (a shutdown, say)."""
        if not self._expired:
            return False
        self._expired = False
        return self._task.uncancel() == 0

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(due, self._wake)
        self._timer_due = due

    def _wake(self) -> None:
        self._timer = None
        due = self._due
        if due is None:
            return  # no read waiting: the next start() arms the timer again
        if self._loop.time() < due:
            self._arm(due)  # the reads since the timer was set moved the end further out
            return
        self._due = None
        self._expired = True
        self._task.cancel()
