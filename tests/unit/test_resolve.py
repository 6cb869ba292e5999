"""Recipient resolution: local users, aliases (recursion, loops, catch-all), remote addresses,
and address tricks that must never turn into a route."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from taube.directory import Resolution, SQLiteDirectory, passwords, resolve_recipient
from taube.directory.resolve import MAX_DEPTH
from taube.queue.envelope import Target


@pytest.fixture
def directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SQLiteDirectory]:
    # Passwords play no part here: the cheapest argon2 parameters keep the many set-ups fast.
    monkeypatch.setattr(passwords, "HASHER", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    with SQLiteDirectory(tmp_path / "taube.db", ["example.test"]) as d:
        d.add_domain("other.test")
        for user in ("alice@example.test", "bob@example.test", "carol@other.test"):
            d.add_user(user, "pw")
        yield d


def local(address: str, original: str) -> Target:
    return Target(kind="local", address=address, original=original)


def remote(address: str, original: str) -> Target:
    return Target(kind="remote", address=address, original=original)


def resolved(directory: SQLiteDirectory, address: str) -> tuple[str, set[tuple[str, str]]]:
    r = resolve_recipient(directory, address)
    assert all(t.original == address for t in r.targets)
    return r.status, {(t.kind, t.address) for t in r.targets}


def test_local_user_in_any_case(directory: SQLiteDirectory) -> None:
    assert resolve_recipient(directory, "Alice@EXAMPLE.test") == Resolution(
        "ok", (local("alice@example.test", "Alice@EXAMPLE.test"),))
    assert resolve_recipient(directory, "carol@other.test").targets == \
        (local("carol@other.test", "carol@other.test"),)


def test_unknown_local_user(directory: SQLiteDirectory) -> None:
    assert resolve_recipient(directory, "nobody@example.test") == Resolution("unknown_user", ())


def test_remote_address_is_kept_as_written(directory: SQLiteDirectory) -> None:
    # the last one is "alice@example.test"@remote.test: a remote mailbox, whatever its local part says
    for address in ("Friend@Remote.test", "x@[192.0.2.1]", "alice@example.test@remote.test"):
        assert resolve_recipient(directory, address) == Resolution("remote", (remote(address, address),))


@pytest.mark.parametrize("address", ["", "alice", "@example.test", "alice@"])
def test_incomplete_addresses_are_unknown(directory: SQLiteDirectory, address: str) -> None:
    directory.add_alias("@example.test", ["alice@example.test"])
    assert resolve_recipient(directory, address) == Resolution("unknown_user", ())


# -- address tricks -----------------------------------------------------------------------------

TRICKS = [
    "alice%remote.test@example.test",  # percent hack (RFC 1123 5.2.16 style routing)
    "remote.test!alice@example.test",  # UUCP bang path
    "alice@remote.test@example.test",  # what "alice@remote.test"@example.test unquotes to
    "@remote.test:alice@example.test",  # a source route, had the parser left it in
    "alice@example.test%remote.test@example.test",
    "alice+tag@example.test",  # no sub-addressing either
    "alice.@example.test",
]


@pytest.mark.parametrize("address", TRICKS)
def test_tricks_are_unknown_local_users(directory: SQLiteDirectory, address: str) -> None:
    assert resolve_recipient(directory, address) == Resolution("unknown_user", ())


@pytest.mark.parametrize("address", TRICKS[:3])
def test_tricks_reach_the_catch_all_never_the_route(directory: SQLiteDirectory, address: str) -> None:
    directory.add_alias("@example.test", ["bob@example.test"])
    assert resolved(directory, address) == ("ok", {("local", "bob@example.test")})


def test_tricky_local_part_that_exists_verbatim(directory: SQLiteDirectory) -> None:
    directory.add_user("alice%remote.test@example.test", "pw")
    directory.add_user("remote.test!alice@example.test", "pw")
    assert resolved(directory, "Alice%Remote.test@example.test") == \
        ("ok", {("local", "alice%remote.test@example.test")})
    assert resolved(directory, "remote.test!alice@example.test") == \
        ("ok", {("local", "remote.test!alice@example.test")})


def test_tricky_alias_targets_stay_local(directory: SQLiteDirectory) -> None:
    directory.add_alias("fwd@example.test", ["victim%remote.test@example.test", "remote.test!v@other.test",
                                            "alice@example.test"])
    assert resolved(directory, "fwd@example.test") == ("ok", {("local", "alice@example.test")})


# -- aliases ------------------------------------------------------------------------------------

def test_alias_to_local_and_remote(directory: SQLiteDirectory) -> None:
    directory.add_alias("team@example.test", ["alice@example.test", "Bob@Example.test", "Ext@remote.test",
                                             "nobody@example.test"])
    r = resolve_recipient(directory, "Team@example.test")
    assert r == Resolution("ok", (local("alice@example.test", "Team@example.test"),
                                  local("bob@example.test", "Team@example.test"),
                                  remote("Ext@remote.test", "Team@example.test")))


def test_exact_alias_before_user_before_catch_all(directory: SQLiteDirectory) -> None:
    directory.add_alias("alice@example.test", ["carol@other.test"])
    directory.add_alias("@example.test", ["bob@example.test"])
    directory.add_user("dave@example.test", "pw")
    assert resolved(directory, "alice@example.test") == ("ok", {("local", "carol@other.test")})
    assert resolved(directory, "dave@example.test") == ("ok", {("local", "dave@example.test")})
    assert resolved(directory, "anyone@example.test") == ("ok", {("local", "bob@example.test")})
    assert resolved(directory, "anyone@other.test") == ("unknown_user", set())


def test_catch_all_to_remote(directory: SQLiteDirectory) -> None:
    directory.add_alias("@other.test", ["Archive@remote.test"])
    # "ok", not "remote": the recipient is local, forwarding is the administrator's decision
    assert resolved(directory, "x@other.test") == ("ok", {("remote", "Archive@remote.test")})


def test_nested_aliases_and_duplicates(directory: SQLiteDirectory) -> None:
    directory.add_alias("all@example.test", ["staff@example.test", "ops@example.test", "alice@example.test"])
    directory.add_alias("staff@example.test", ["alice@example.test", "bob@example.test"])
    directory.add_alias("ops@example.test", ["bob@example.test", "pager@remote.test", "staff@example.test"])
    r = resolve_recipient(directory, "all@example.test")
    assert [(t.kind, t.address) for t in r.targets] == [
        ("local", "alice@example.test"), ("local", "bob@example.test"), ("remote", "pager@remote.test")]


def test_alias_loop_without_users_is_unknown(directory: SQLiteDirectory) -> None:
    directory.add_alias("a@example.test", ["b@example.test"])
    directory.add_alias("b@example.test", ["a@example.test"])
    assert resolved(directory, "a@example.test") == ("unknown_user", set())


def test_alias_loop_keeps_the_users_on_the_way(directory: SQLiteDirectory) -> None:
    directory.add_alias("a@example.test", ["b@example.test", "alice@example.test"])
    directory.add_alias("b@example.test", ["a@example.test", "bob@example.test"])
    assert resolved(directory, "a@example.test") == \
        ("ok", {("local", "alice@example.test"), ("local", "bob@example.test")})


def test_alias_naming_its_own_user_delivers_to_it(directory: SQLiteDirectory) -> None:
    directory.add_alias("alice@example.test", ["alice@example.test", "alice@remote.test"])
    assert resolved(directory, "alice@example.test") == \
        ("ok", {("local", "alice@example.test"), ("remote", "alice@remote.test")})


def test_catch_all_loop_ends(directory: SQLiteDirectory) -> None:
    directory.add_alias("@example.test", ["lost@example.test"])
    assert resolved(directory, "x@example.test") == ("unknown_user", set())


def test_alias_with_only_unknown_local_targets_is_unknown(directory: SQLiteDirectory) -> None:
    directory.add_alias("gone@example.test", ["left@example.test"])
    assert resolved(directory, "gone@example.test") == ("unknown_user", set())


def _chain(directory: SQLiteDirectory, length: int) -> None:
    """l0 -> l1 -> ... -> l{length-1} -> alice: alice is ``length`` aliases away."""
    for i in range(length):
        target = f"l{i + 1}@example.test" if i + 1 < length else "alice@example.test"
        directory.add_alias(f"l{i}@example.test", [target])


def test_depth_limit_reached(directory: SQLiteDirectory) -> None:
    _chain(directory, MAX_DEPTH)
    assert resolved(directory, "l0@example.test") == ("ok", {("local", "alice@example.test")})


def test_depth_limit_exceeded(directory: SQLiteDirectory, caplog: pytest.LogCaptureFixture) -> None:
    _chain(directory, MAX_DEPTH + 1)
    with caplog.at_level(logging.WARNING, logger="taube.directory"):
        assert resolved(directory, "l0@example.test") == ("unknown_user", set())
    assert "deeper than 10 levels" in caplog.text


def test_resolution_is_immutable(directory: SQLiteDirectory) -> None:
    r = resolve_recipient(directory, "alice@example.test")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.status = "remote"  # type: ignore[misc]
