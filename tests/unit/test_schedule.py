"""The queue's schedule as plain values and a given ``now``: backoff, expiry, delay warnings, and
which recipients are due (RFC 5321 4.5.4.1)."""

from __future__ import annotations

import pytest

from taube.config import QueueSettings
from taube.delivery.schedule import MIN_WAIT, Due, Schedule, due, merge_forced, scan_wait
from taube.queue.store import QueuedRecipient

HOUR = 3600.0
DAY = 24 * HOUR
T0 = 1_800_000_000.0  # when the message was received
DEFAULT = Schedule(backoff=(300.0, 600.0, 1200.0, 2400.0, 3600.0), lifetime=5 * DAY,
                   delay_warning=4 * HOUR)


def rcpt(address: str, *, status: str = "queued", next_attempt: float = T0) -> QueuedRecipient:
    return QueuedRecipient(address=address, original=address, status=status, next_attempt=next_attempt)


def test_from_settings_reads_the_queue_section() -> None:
    queue = QueueSettings.model_validate({"backoff": ["1m", "2h"], "lifetime": "3d", "delay_warning": "0"})
    assert Schedule.from_settings(queue) == Schedule(backoff=(60.0, 7200.0), lifetime=3 * DAY,
                                                     delay_warning=0.0)
    assert Schedule.from_settings(QueueSettings()) == DEFAULT


@pytest.mark.parametrize(("attempts", "wait"), [(1, 300), (2, 600), (3, 1200), (4, 2400), (5, 3600),
                                                (6, 3600), (40, 3600)])
def test_wait_after_follows_the_backoff_then_repeats_the_last(attempts: int, wait: float) -> None:
    assert DEFAULT.wait_after(attempts) == wait


def test_a_single_wait_repeats() -> None:
    assert [Schedule(backoff=(90.0,), lifetime=DAY, delay_warning=0).wait_after(n) for n in (1, 2, 9)] == [90, 90, 90]


def test_next_attempt_is_now_plus_the_wait() -> None:
    assert DEFAULT.next_attempt(T0, now=T0, attempts=1) == T0 + 300
    assert DEFAULT.next_attempt(T0, now=T0 + HOUR, attempts=3) == T0 + HOUR + 1200
    assert DEFAULT.next_attempt(T0, now=T0 + DAY, attempts=9) == T0 + DAY + 3600


def test_next_attempt_is_not_scheduled_past_the_lifetime() -> None:
    # Ten minutes before the end: the hourly wait is cut to the end of the lifetime ...
    assert DEFAULT.next_attempt(T0, now=T0 + 5 * DAY - 600, attempts=9) == T0 + 5 * DAY
    # ... and at (or past) the end the last attempt still comes a second later, not in the past.
    assert DEFAULT.next_attempt(T0, now=T0 + 5 * DAY, attempts=9) == T0 + 5 * DAY + 1
    assert DEFAULT.next_attempt(T0, now=T0 + 6 * DAY, attempts=9) == T0 + 6 * DAY + 1


def test_expired_at_the_lifetime_not_before() -> None:
    assert not DEFAULT.expired(T0, now=T0)
    assert not DEFAULT.expired(T0, now=T0 + 5 * DAY - 1)
    assert DEFAULT.expired(T0, now=T0 + 5 * DAY)
    assert DEFAULT.expired(T0, now=T0 + 7 * DAY)


def test_delay_warning_due_once_after_the_delay() -> None:
    assert not DEFAULT.delay_warning_due(T0, now=T0 + 4 * HOUR - 1, warned=False)
    assert DEFAULT.delay_warning_due(T0, now=T0 + 4 * HOUR, warned=False)
    assert DEFAULT.delay_warning_due(T0, now=T0 + 2 * DAY, warned=False)
    assert not DEFAULT.delay_warning_due(T0, now=T0 + 2 * DAY, warned=True)


def test_delay_warning_zero_means_never() -> None:
    never = Schedule(backoff=(300.0,), lifetime=5 * DAY, delay_warning=0.0)
    assert not never.delay_warning_due(T0, now=T0 + 4 * DAY, warned=False)


def test_due_takes_pending_recipients_whose_time_has_come() -> None:
    recipients = [rcpt("a@x.test", next_attempt=T0 + 100),
                  rcpt("b@x.test", status="deferred", next_attempt=T0 + 300),
                  rcpt("c@x.test", status="deferred", next_attempt=T0 + 900),
                  rcpt("d@x.test", status="delivered", next_attempt=T0),
                  rcpt("e@x.test", status="bounced", next_attempt=T0),
                  rcpt("f@x.test", status="deferred", next_attempt=T0 + 600)]
    assert due(recipients, T0 + 300, set()) == Due(("a@x.test", "b@x.test"), T0 + 600)
    assert due(recipients, T0 + 50, set()) == Due((), T0 + 100)
    assert due(recipients, T0 + 1000, set()) == Due(("a@x.test", "b@x.test", "c@x.test", "f@x.test"), None)


def test_due_leaves_busy_recipients_alone() -> None:
    recipients = [rcpt("a@x.test"), rcpt("b@x.test"), rcpt("c@x.test", next_attempt=T0 + 60)]
    assert due(recipients, T0, set(), busy={"a@x.test"}) == Due(("b@x.test",), T0 + 60)
    # A busy recipient is no reason to wake up either: its worker records the next attempt.
    assert due(recipients, T0, set(), busy={"a@x.test", "b@x.test", "c@x.test"}) == Due((), None)


def test_forced_recipients_are_due_whatever_their_time() -> None:
    recipients = [rcpt("a@x.test", status="deferred", next_attempt=T0 + HOUR),
                  rcpt("b@x.test", status="deferred", next_attempt=T0 + 2 * HOUR),
                  rcpt("c@x.test", status="delivered")]
    assert due(recipients, T0, {"b@x.test"}) == Due(("b@x.test",), T0 + HOUR)
    assert due(recipients, T0, None) == Due(("a@x.test", "b@x.test"), None)  # retry: all pending
    assert due(recipients, T0, {"c@x.test"}) == Due((), T0 + HOUR)  # final stays final


def test_merge_forced() -> None:
    assert merge_forced(set(), {"a@x.test"}) == {"a@x.test"}
    assert merge_forced({"a@x.test"}, {"b@x.test"}) == {"a@x.test", "b@x.test"}
    assert merge_forced({"a@x.test"}, None) is None
    assert merge_forced(None, {"b@x.test"}) is None


@pytest.mark.parametrize(("next_scan", "now", "wait"), [
    (T0 + 10, T0, 10),  # the next due time comes first
    (T0 + 100, T0, 30),  # at most the scan interval
    (T0 - 5, T0, MIN_WAIT),  # already past: a short pause, not a busy loop
    (T0, T0, MIN_WAIT),
])
def test_scan_wait(next_scan: float, now: float, wait: float) -> None:
    assert scan_wait(next_scan, now, interval=30.0) == wait
