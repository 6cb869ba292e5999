"""The login penalty: fixed when an attempt arrives, the same for SMTP and POP3 sessions."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from taube.net.login_throttle import MAX_PENALTY, LoginThrottle
from taube.sharedstate import LocalState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def services(delay: float = 1.0, max_failures: int = 10, clock: Clock | None = None) -> SimpleNamespace:
    auth = SimpleNamespace(failure_delay=delay, failure_window=900.0, max_failures=max_failures)
    return SimpleNamespace(settings=SimpleNamespace(auth=auth), state=LocalState(clock or Clock()))


def test_attempts_arriving_together_get_one_deadline_whichever_finishes_first() -> None:
    clock = Clock()
    svc = services(clock=clock)
    a, b = LoginThrottle(svc, "192.0.2.1", clock), LoginThrottle(svc, "192.0.2.1", clock)
    for t in (a, b):
        t.input()
        t.arrived()  # verification starts
    clock.now += 0.020  # b's verification ends first ...
    failures_b, wait_b = b.failed()
    deadline_b = clock.now + wait_b
    clock.now += 0.005  # ... then a's
    failures_a, wait_a = a.failed()
    assert (failures_b, failures_a) == (1, 2)  # both counted
    assert clock.now + wait_a == pytest.approx(deadline_b) == 101.0  # one deadline: arrival + 1 x delay


def test_one_failure_after_another_waits_longer_each_time() -> None:
    clock = Clock()
    svc = services(clock=clock)
    t = LoginThrottle(svc, "192.0.2.1", clock)
    waits = []
    for _ in range(3):
        t.input()
        clock.now += 0.02
        failures, wait = t.failed()
        waits.append(round(wait, 3))
        clock.now += wait
    assert waits == pytest.approx([0.98, 1.98, 2.98])  # delay x (failures before + 1), from the arrival


def test_penalty_is_capped_and_success_forgets_failures() -> None:
    clock = Clock()
    svc = services(delay=10.0, max_failures=3, clock=clock)
    t = LoginThrottle(svc, "192.0.2.1", clock)
    for _ in range(5):
        t.input()
        _, wait = t.failed()
    assert wait == MAX_PENALTY
    assert t.blocked() and not LoginThrottle(svc, "192.0.2.9", clock).blocked()
    t.succeeded()
    assert not t.blocked()


def test_pipelined_logins_in_one_input_are_separate_attempts() -> None:
    clock = Clock()
    svc = services(clock=clock)
    t = LoginThrottle(svc, "192.0.2.1", clock)
    t.input()
    _, first = t.failed()
    _, second = t.failed()  # the next PASS from the same read: its penalty counts the first
    assert (first, second) == pytest.approx((1.0, 2.0))


def test_the_state_clock_is_its_own_and_the_prior_count_is_taken_as_the_input_arrived() -> None:
    """The shared state keeps its own (wall) clock, far from this process's monotonic one; a
    failure that ages out of the window after the input arrived still counts for the penalty."""
    clock, wall = Clock(), Clock()
    wall.now = 1_800_000_000.0
    svc = services(clock=wall)
    svc.state.auth_failed("192.0.2.1", 900.0)
    t = LoginThrottle(svc, "192.0.2.1", clock)
    wall.now += 899.5
    t.input()
    clock.now += 1.0  # the check starts a second later: the failure is 900.5 s old by then
    wall.now += 1.0
    t.arrived()
    failures, wait = t.failed()
    assert failures == 1  # the old one has aged out of the state's window ...
    assert wait == pytest.approx(1.0)  # ... but counted for the penalty: 2 x 1 s from the arrival


def test_the_auth_section_can_be_given_apart_from_the_services() -> None:
    """A session hands the throttle the [auth] slice it was configured with."""
    clock = Clock()
    svc = services(max_failures=10, clock=clock)
    strict = SimpleNamespace(failure_delay=1.0, failure_window=900.0, max_failures=1)
    t = LoginThrottle(svc, "192.0.2.1", clock, auth=strict)  # type: ignore[arg-type]
    t.input()
    t.failed()
    assert t.blocked() and not LoginThrottle(svc, "192.0.2.1", clock).blocked()
