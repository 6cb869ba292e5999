"""The site's rules answer repeated RCPT and sender checks from memory for a short while
(policy/local.py): no directory read and no thread hop for a recipient seen moments ago, an
unknown user always read again, a removed user refused once the answer expired."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from taube.policy import local as local_module
from taube.policy.local import ANSWER_TTL, Answers, LocalPolicy, LocalRules
from taube.policy.pipeline import Context, Pipeline, Recipient
from taube.policy.relay import RelayPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingDirectory:
    """A directory that counts its reads."""

    def __init__(self) -> None:
        self.users = {"alice@example.test"}
        self.aliases = {"info@example.test": ["alice@example.test"]}
        self.reads = 0

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower() == "example.test"

    def list_domains(self) -> list[str]:
        return ["example.test"]

    def user_exists(self, address: str) -> bool:
        self.reads += 1
        return address.lower() in self.users

    def get_alias(self, address: str) -> list[str] | None:
        self.reads += 1
        return self.aliases.get(address.lower())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def directory() -> CountingDirectory:
    return CountingDirectory()


@pytest.fixture
def policy(directory: CountingDirectory, clock: Clock) -> LocalPolicy:
    return LocalPolicy(LocalRules(hostname="mx.example.test", domains=("example.test",)),
                       directory, RelayPolicy([ipaddress.ip_network("127.0.0.0/8")]),  # type: ignore[arg-type]
                       clock=clock)


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The look-ups that went to a worker thread, by function name."""
    made: list[str] = []
    real = LocalPolicy._lookup

    async def counting(self: LocalPolicy, fn, *args):  # type: ignore[no-untyped-def]
        made.append(getattr(fn, "__name__", repr(fn)))
        return await real(self, fn, *args)

    monkeypatch.setattr(local_module.LocalPolicy, "_lookup", counting)
    return made


def rcpt(policy: LocalPolicy, address: str, client_ip: str = "192.0.2.1") -> tuple[str, list[str]]:
    ctx = Context(client_ip=client_ip)
    local_part, _, domain = address.rpartition("@")
    ctx.tx.rcpt = Recipient(address=address, local=local_part, domain=domain)
    verdict = asyncio.run(Pipeline([policy]).rcpt(ctx))
    return verdict.action, [t.address for t in ctx.tx.rcpt.targets]


def test_a_recipient_seen_moments_ago_is_answered_without_directory_or_thread(
        policy: LocalPolicy, directory: CountingDirectory, clock: Clock, hops: list[str]) -> None:
    assert rcpt(policy, "info@example.test") == ("continue", ["alice@example.test"])
    reads = directory.reads
    assert reads > 0 and len(hops) == 1
    clock.now += ANSWER_TTL - 0.01
    for _ in range(3):
        assert rcpt(policy, "info@example.test") == ("continue", ["alice@example.test"])
    assert directory.reads == reads and len(hops) == 1
    clock.now += 0.02  # expired: read again
    assert rcpt(policy, "info@example.test") == ("continue", ["alice@example.test"])
    assert directory.reads == 2 * reads and len(hops) == 2


def test_each_answer_gets_its_own_targets(policy: LocalPolicy) -> None:
    ctx = Context(client_ip="192.0.2.1")
    first = Recipient(address="alice@example.test", local="alice", domain="example.test")
    ctx.tx.rcpt = first
    asyncio.run(Pipeline([policy]).rcpt(ctx))
    first.targets.clear()  # the session replaces targets for NOTIFY/ORCPT: the cache keeps its own
    assert rcpt(policy, "alice@example.test") == ("continue", ["alice@example.test"])


def test_an_unknown_user_is_read_every_time_so_a_new_user_is_found_at_once(
        policy: LocalPolicy, directory: CountingDirectory, hops: list[str]) -> None:
    assert rcpt(policy, "bob@example.test")[0] == "reject"
    assert rcpt(policy, "bob@example.test")[0] == "reject"
    assert len(hops) == 2
    directory.users.add("bob@example.test")
    assert rcpt(policy, "bob@example.test") == ("continue", ["bob@example.test"])


def test_a_removed_user_is_refused_once_the_answer_expired(
        policy: LocalPolicy, directory: CountingDirectory, clock: Clock) -> None:
    assert rcpt(policy, "alice@example.test")[0] == "continue"
    directory.users.discard("alice@example.test")
    assert rcpt(policy, "alice@example.test")[0] == "continue"  # within the interval
    clock.now += ANSWER_TTL
    assert rcpt(policy, "alice@example.test")[0] == "reject"


def test_a_remote_answer_is_kept_but_relaying_is_decided_per_client(
        policy: LocalPolicy, hops: list[str]) -> None:
    assert rcpt(policy, "x@example.org", client_ip="127.0.0.1")[0] == "continue"
    assert rcpt(policy, "x@example.org", client_ip="192.0.2.1")[0] == "reject"
    assert len(hops) == 1


def test_sender_ownership_keeps_only_a_yes(
        policy: LocalPolicy, directory: CountingDirectory, clock: Clock, hops: list[str]) -> None:
    def mail(sender: str) -> str:
        ctx = Context(client_ip="192.0.2.1", user="alice@example.test")
        ctx.tx.sender = sender
        return asyncio.run(Pipeline([policy]).mail(ctx)).action

    assert mail("info@example.test") == "continue"
    assert mail("info@example.test") == "continue"
    assert hops == ["owns_sender"]
    assert mail("bob@example.test") == "reject"
    directory.aliases["bob@example.test"] = ["alice@example.test"]
    assert mail("bob@example.test") == "continue"  # a no is never kept
    del directory.aliases["info@example.test"]
    clock.now += ANSWER_TTL
    assert mail("info@example.test") == "reject"


def test_answers_are_bounded() -> None:
    clock = Clock()
    answers: Answers[str, int] = Answers(ttl=10, limit=3, clock=clock)
    for n in range(3):
        answers.put(f"k{n}", n)
    clock.now += 5
    answers.put("k3", 3)  # full and nothing expired: forgets everything else
    assert len(answers) == 1 and answers.get("k3") == 3 and answers.get("k0") is None
    clock.now += 7
    answers.put("k4", 4)
    answers.put("k5", 5)
    clock.now += 4  # k3 expired, k4 and k5 not
    answers.put("k6", 6)
    assert len(answers) == 3 and answers.get("k3") is None
    assert [answers.get(k) for k in ("k4", "k5", "k6")] == [4, 5, 6]
