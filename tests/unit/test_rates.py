"""Per-client rate limits (as Postfix's anvil) with an injected clock: over the limit refused
with its reply, the 60-second window rolls over, 0 is off, trusted clients exempt, and the
counters shared by two counter objects on one file and by a second process."""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import sys
import textwrap
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from taube.config import SMTPSettings
from taube.policy.pipeline import Context, Pipeline, Recipient, Verdict
from taube.policy.rates import WINDOW, RateCheck, RateCounter, RateLimits
from taube.policy.relay import RelayPolicy
from tests.clock import Clock

T = TypeVar("T")

CLIENT = "192.0.2.10"
TRUSTED = RelayPolicy([ipaddress.ip_network("127.0.0.1/32")]).is_trusted
ROOT = Path(__file__).resolve().parents[2]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def rate_check(tmp_path: Path, clock: Clock, **limits: int) -> RateCheck:
    return RateCheck.open(tmp_path, RateLimits(**limits), TRUSTED, clock=clock)


@pytest.fixture
def check(tmp_path: Path, clock: Clock) -> Iterator[RateCheck]:
    limited = rate_check(tmp_path, clock, connections=2, messages=3, recipients=4)
    yield limited
    limited.close()


def replies(verdicts: list[Verdict]) -> list[str]:
    return ["ok" if not v.refused else f"{v.reply.code} {v.reply.enhanced} {v.reply.text}"  # type: ignore[union-attr]
            for v in verdicts]


def connects(check: RateCheck, n: int, client: str = CLIENT) -> list[str]:
    async def main() -> list[Verdict]:
        return [await Pipeline([check]).connect(Context(client_ip=client)) for _ in range(n)]
    return replies(run(main()))


def mails(check: RateCheck, n: int, client: str = CLIENT) -> list[str]:
    async def main() -> list[Verdict]:
        ctx = Context(client_ip=client)
        out = []
        for i in range(n):
            ctx.new_transaction().sender = f"s{i}@sender.example"
            out.append(await Pipeline([check]).mail(ctx))
        return out
    return replies(run(main()))


def rcpts(check: RateCheck, n: int, client: str = CLIENT) -> list[str]:
    async def main() -> list[Verdict]:
        ctx = Context(client_ip=client)
        ctx.tx.sender = "s@sender.example"
        out = []
        for i in range(n):
            ctx.tx.rcpt = Recipient(address=f"r{i}@example.test", local=f"r{i}", domain="example.test")
            out.append(await Pipeline([check]).rcpt(ctx))
        return out
    return replies(run(main()))


# -- the limits ---------------------------------------------------------------------------------


def test_limits_come_from_the_smtp_settings() -> None:
    smtp = SMTPSettings(max_connection_rate=10, max_message_rate=20, max_recipient_rate=30)
    assert RateLimits.from_settings(smtp) == RateLimits(connections=10, messages=20, recipients=30)
    assert not RateLimits.from_settings(SMTPSettings()).enabled


def test_connections_over_the_limit_get_421(check: RateCheck) -> None:
    assert connects(check, 3) == ["ok", "ok", "421 4.7.0 Error: too many connections from 192.0.2.10"]


def test_messages_over_the_limit_get_450(check: RateCheck) -> None:
    assert mails(check, 4)[3:] == ["450 4.7.1 Error: too many messages from 192.0.2.10"]
    assert mails(check, 1) == ["450 4.7.1 Error: too many messages from 192.0.2.10"]  # next session


def test_recipients_over_the_limit_get_450(check: RateCheck) -> None:
    assert rcpts(check, 6) == ["ok"] * 4 + ["450 4.7.1 Error: too many recipients from 192.0.2.10"] * 2


def test_kinds_and_clients_are_counted_apart(check: RateCheck) -> None:
    assert connects(check, 2) == ["ok", "ok"]
    assert mails(check, 3) == ["ok"] * 3
    assert rcpts(check, 4) == ["ok"] * 4
    assert connects(check, 2, "192.0.2.11") == ["ok", "ok"]
    assert connects(check, 1, "::ffff:192.0.2.10") == [  # the same address, another spelling
        "421 4.7.0 Error: too many connections from ::ffff:192.0.2.10"]


def test_ipv6_clients_are_counted_per_64(check: RateCheck) -> None:
    """An IPv6 client holds a whole /64 (RFC 6177: the least an end site gets) and may take a
    new address for every connection: counted per address, it would never meet a limit."""
    assert mails(check, 2, "2001:db8:1:2::1") == ["ok", "ok"]
    assert mails(check, 2, "2001:db8:1:2:ffff::9") == [
        "ok", "450 4.7.1 Error: too many messages from 2001:db8:1:2:ffff::9"]
    assert mails(check, 1, "2001:db8:1:3::1") == ["ok"]  # the next /64: another client


def test_the_window_rolls_over(check: RateCheck, clock: Clock) -> None:
    """anvil's fixed window: it opens at the first event and ends WINDOW seconds later."""
    assert mails(check, 3) == ["ok"] * 3
    clock.now += WINDOW - 1
    assert mails(check, 1) != ["ok"]
    clock.now += 1  # the window that opened at the first MAIL is over
    assert mails(check, 3) == ["ok"] * 3
    assert mails(check, 1) != ["ok"]


def test_refused_attempts_count_as_anvil_counts_them(tmp_path: Path, clock: Clock) -> None:
    counter = RateCounter(tmp_path / "rates.db", clock=clock)
    assert [counter.hit("message", CLIENT) for _ in range(5)] == [1, 2, 3, 4, 5]
    assert counter.count("message", CLIENT) == 5 and counter.count("recipient", CLIENT) == 0
    clock.now += WINDOW
    assert counter.count("message", CLIENT) == 0
    assert counter.hit("message", CLIENT) == 1
    counter.close()


def test_a_clock_that_went_back_opens_a_new_window(tmp_path: Path, clock: Clock) -> None:
    counter = RateCounter(tmp_path / "rates.db", clock=clock)
    assert [counter.hit("message", CLIENT) for _ in range(3)] == [1, 2, 3]
    clock.now -= 3600
    assert counter.hit("message", CLIENT) == 1
    counter.close()


def test_an_event_read_a_moment_before_the_window_opened_counts_in_it(tmp_path: Path,
                                                                     clock: Clock) -> None:
    """Another process opened the window with a clock read a little later than ours: our event
    is counted in that window, not made into a new one (which would lose the other's events)."""
    counter = RateCounter(tmp_path / "rates.db", clock=clock)
    assert [counter.hit("message", CLIENT) for _ in range(3)] == [1, 2, 3]
    clock.now -= 0.005
    assert counter.hit("message", CLIENT) == 4
    assert counter.count("message", CLIENT) == 4
    counter.close()


def test_zero_is_off(tmp_path: Path, clock: Clock) -> None:
    check = rate_check(tmp_path, clock, messages=1)
    assert connects(check, 5) == ["ok"] * 5
    assert rcpts(check, 5) == ["ok"] * 5
    assert mails(check, 2) == ["ok", "450 4.7.1 Error: too many messages from 192.0.2.10"]
    assert check.counter.count("connection", CLIENT) == check.counter.count("recipient", CLIENT) == 0
    check.close()


def test_trusted_clients_are_exempt(check: RateCheck) -> None:
    assert connects(check, 10, "127.0.0.1") == ["ok"] * 10
    assert mails(check, 10, "127.0.0.1") == ["ok"] * 10
    assert rcpts(check, 10, "127.0.0.1") == ["ok"] * 10
    assert check.counter.count("connection", "127.0.0.1") == 0


def test_counters_that_cannot_be_reached_let_the_client_through(
        tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    check = rate_check(tmp_path, clock, messages=1)
    check.close()  # every use now raises sqlite3.ProgrammingError
    assert mails(check, 3) == ["ok"] * 3
    assert "rate counters" in caplog.text and "message from 192.0.2.10 not counted" in caplog.text


def test_purge_removes_closed_windows_only(tmp_path: Path, clock: Clock) -> None:
    counter = RateCounter(tmp_path / "rates.db", clock=clock)
    counter.hit("message", "192.0.2.1")
    clock.now += WINDOW / 2
    counter.hit("message", "192.0.2.2")
    clock.now += WINDOW / 2
    assert counter.purge() == 1  # 192.0.2.1's window has closed, 192.0.2.2's is open
    assert counter.count("message", "192.0.2.2") == 1
    counter.close()


# -- shared by processes ------------------------------------------------------------------------


def test_two_counters_on_one_file_share_the_count(tmp_path: Path, clock: Clock) -> None:
    """Two connections, as two server processes have."""
    one = rate_check(tmp_path, clock, messages=3)
    two = rate_check(tmp_path, clock, messages=3)
    assert mails(one, 2) == ["ok", "ok"]
    assert mails(two, 2) == ["ok", "450 4.7.1 Error: too many messages from 192.0.2.10"]
    assert mails(one, 1) != ["ok"]
    one.close()
    two.close()


def test_a_second_process_shares_the_count(tmp_path: Path) -> None:
    """Another process counts into the same file at the same time as this one: no event is lost
    or counted twice. Both start on a signal, once the other has opened the file; the window is
    long so that it cannot close during the test."""
    n = 1500
    code = textwrap.dedent(f"""
        import sys
        from taube.policy.rates import RateCounter
        counter = RateCounter({str(tmp_path / 'rates.db')!r}, window=86400.0)
        print("ready", flush=True)
        sys.stdin.readline()
        print(max(counter.hit("recipient", "192.0.2.10") for _ in range({n})))
    """)
    counter = RateCounter(tmp_path / "rates.db", window=86400.0)
    other = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdin is not None
        assert other.stdout.readline() == "ready\n"
        other.stdin.write("go\n")
        other.stdin.flush()
        mine = [counter.hit("recipient", "192.0.2.10") for _ in range(n)]
        out, err = other.communicate(timeout=60)
    finally:
        other.kill()
        other.wait(timeout=10)
    assert other.returncode == 0, err
    assert counter.count("recipient", "192.0.2.10") == 2 * n
    assert len(set(mine)) == n  # each of this process's events had its own count ...
    assert max(max(mine), int(out)) == 2 * n  # ... and the last event of either saw them all
    counter.close()
