"""The SQLite directory: domains, users, aliases, password storage, several users of one file."""

from __future__ import annotations

import base64
import sqlite3
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from taube.directory import DirectoryError, SQLiteDirectory
from taube.directory import passwords
from taube.directory.passwords import UnusablePassword, saslprep
from taube.proto.sasl import ScramCredentials, scram_credentials

PASSWORD = "Correct-Horse-Battery-Staple-42"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "taube.db"


@pytest.fixture
def directory(db_path: Path) -> Iterator[SQLiteDirectory]:
    with SQLiteDirectory(db_path, ["Example.Test"]) as d:
        yield d


# -- domains ------------------------------------------------------------------------------------

def test_domains_are_config_and_database_case_insensitive(directory: SQLiteDirectory) -> None:
    directory.add_domain("Other.TEST.")
    assert directory.is_local_domain("EXAMPLE.test")
    assert directory.is_local_domain("other.test")
    assert not directory.is_local_domain("remote.test")
    assert directory.list_domains() == ["example.test", "other.test"]


@pytest.mark.parametrize(("domain", "message"), [
    ("example.test", "configuration file"),
    ("bad domain", "not a valid domain"),
    ("-x.test", "not a valid domain"),
])
def test_add_domain_refused(directory: SQLiteDirectory, domain: str, message: str) -> None:
    with pytest.raises(DirectoryError, match=message):
        directory.add_domain(domain)


def test_add_domain_twice(directory: SQLiteDirectory) -> None:
    directory.add_domain("other.test")
    with pytest.raises(DirectoryError, match="already a local domain"):
        directory.add_domain("OTHER.test")


def test_del_domain(directory: SQLiteDirectory) -> None:
    directory.add_domain("other.test")
    directory.del_domain("Other.Test")
    assert not directory.is_local_domain("other.test")
    with pytest.raises(DirectoryError, match="not a local domain"):
        directory.del_domain("other.test")
    with pytest.raises(DirectoryError, match="configuration file"):
        directory.del_domain("example.test")


def test_del_domain_refused_while_in_use(directory: SQLiteDirectory) -> None:
    directory.add_domain("other.test")
    directory.add_user("u@other.test", PASSWORD)
    directory.add_alias("@other.test", ["u@other.test"])
    with pytest.raises(DirectoryError, match="1 user.* and 1 alias"):
        directory.del_domain("other.test")
    directory.del_user("u@other.test")
    with pytest.raises(DirectoryError, match="0 user.* and 1 alias"):
        directory.del_domain("other.test")
    directory.del_alias("@other.test")
    directory.del_domain("other.test")


# -- users --------------------------------------------------------------------------------------

def test_user_lifecycle(directory: SQLiteDirectory) -> None:
    directory.add_domain("other.test")
    directory.add_user("Alice@Example.TEST", PASSWORD)
    directory.add_user("bob@example.test", "bob's password")
    directory.add_user("carol@other.test", "carol's password")
    assert directory.list_users() == ["alice@example.test", "bob@example.test", "carol@other.test"]
    assert directory.list_users("OTHER.test") == ["carol@other.test"]
    assert directory.user_exists("ALICE@example.test")
    directory.del_user("BOB@example.test")
    assert not directory.user_exists("bob@example.test")
    with pytest.raises(DirectoryError, match="no such user"):
        directory.del_user("bob@example.test")


def test_add_user_twice_in_any_case(directory: SQLiteDirectory) -> None:
    directory.add_user("alice@example.test", PASSWORD)
    with pytest.raises(DirectoryError, match="already exists"):
        directory.add_user("ALICE@example.test", "another")


@pytest.mark.parametrize(("address", "message"), [
    ("alice@remote.test", "not a local domain"),
    ("alice", "not a valid address"),
    ("@example.test", "not a valid address"),
    ('"a b"@example.test', "plain local@domain"),
    ("<alice@example.test>", "plain local@domain"),
    ("@relay.test:alice@example.test", "plain local@domain"),
    ("alice@[192.0.2.1]", "not a local domain"),
    ("a" * 65 + "@example.test", "too long"),
])
def test_add_user_refused(directory: SQLiteDirectory, address: str, message: str) -> None:
    with pytest.raises(DirectoryError, match=message):
        directory.add_user(address, PASSWORD)
    assert directory.list_users() == []


@pytest.mark.parametrize("password", ["", "\u00ad", "bell\x07", "\u0627x\u0628"])
def test_unusable_passwords_refused(directory: SQLiteDirectory, password: str) -> None:
    with pytest.raises(DirectoryError, match="password"):
        directory.add_user("alice@example.test", password)
    assert not directory.user_exists("alice@example.test")


def test_verify_and_change_password(directory: SQLiteDirectory) -> None:
    directory.add_user("alice@example.test", PASSWORD)
    assert directory.verify_password("Alice@example.test", PASSWORD)
    assert not directory.verify_password("alice@example.test", PASSWORD.lower())
    assert not directory.verify_password("alice@example.test", "")
    assert not directory.verify_password("nobody@example.test", PASSWORD)
    directory.set_password("alice@example.test", "new secret")
    assert directory.verify_password("alice@example.test", "new secret")
    assert not directory.verify_password("alice@example.test", PASSWORD)
    with pytest.raises(DirectoryError, match="no such user"):
        directory.set_password("nobody@example.test", "x")


def test_password_after_saslprep(directory: SQLiteDirectory) -> None:
    """RFC 4013: a no-break space is a space, a soft hyphen nothing, ligatures decompose."""
    directory.add_user("alice@example.test", "na\u00a0\ufb01ve\u00ad")
    assert directory.verify_password("alice@example.test", "na five")


def test_unknown_user_costs_one_argon2_verification(directory: SQLiteDirectory,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    directory.add_user("alice@example.test", PASSWORD)
    checked: list[str] = []
    real = passwords.HASHER

    class CountingHasher:
        def verify(self, stored: str, password: str) -> bool:
            checked.append(stored)
            return real.verify(stored, password)

    monkeypatch.setattr(passwords, "HASHER", CountingHasher())
    assert not directory.verify_password("nobody@example.test", PASSWORD)
    assert not directory.verify_password("alice@example.test", "wrong")
    assert not directory.verify_password("alice@example.test", "bell\x07")  # refused by SASLprep
    assert checked[0] == checked[2] == passwords.DUMMY_HASH
    assert checked[1].startswith("$argon2id$") and checked[1] != passwords.DUMMY_HASH


def test_dummy_hash_has_the_current_parameters() -> None:
    assert not passwords.HASHER.check_needs_rehash(passwords.DUMMY_HASH)


def test_nothing_of_the_password_is_stored(db_path: Path) -> None:
    with SQLiteDirectory(db_path, ["example.test"]) as directory:
        directory.add_user("alice@example.test", PASSWORD)
        directory.set_password("alice@example.test", PASSWORD + "-2")
        stored = b"".join(p.read_bytes() for p in db_path.parent.glob("taube.db*"))
        assert directory.verify_password("alice@example.test", PASSWORD + "-2")
    for needle in (PASSWORD, PASSWORD[:12]):
        for encoding in ("utf-8", "utf-16-le", "utf-16-be"):
            assert needle.encode(encoding) not in stored
        assert base64.b64encode(needle.encode()) not in stored
    assert b"$argon2id$v=19$m=19456,t=2,p=1$" in stored


def test_scram_credentials_are_stored_per_user(directory: SQLiteDirectory) -> None:
    """The keys the SCRAM-SHA-256 mechanism checks (RFC 5802 section 3), of the SASLprep'd
    password, with a salt of each user's own."""
    directory.add_user("alice@example.test", "pencil")
    directory.add_user("bob@example.test", "pen\u00adcil")
    alice = directory.scram_credentials("ALICE@example.test")
    bob = directory.scram_credentials("bob@example.test")
    assert isinstance(alice, ScramCredentials) and isinstance(bob, ScramCredentials)
    assert alice.iterations == 4096 and len(alice.salt) == 16
    assert alice == scram_credentials("pencil", alice.salt, 4096)
    assert bob == scram_credentials("pencil", bob.salt, 4096)
    assert alice.salt != bob.salt and alice.stored_key != bob.stored_key
    assert directory.scram_credentials("nobody@example.test") is None


@pytest.mark.parametrize(("text", "prepared"), [  # RFC 4013 section 3
    ("I\u00adX", "IX"), ("user", "user"), ("USER", "USER"), ("\u00aa", "a"), ("\u2168", "IX"),
])
def test_saslprep_examples(text: str, prepared: str) -> None:
    assert saslprep(text) == prepared


@pytest.mark.parametrize("text", ["\u0007", "\u0627\u0031", "\ue000", "\u0221"])
def test_saslprep_refusals(text: str) -> None:
    """RFC 4013 section 3 (control character, bidi rule), private use, unassigned in 3.2."""
    with pytest.raises(UnusablePassword):
        saslprep(text)


# -- aliases ------------------------------------------------------------------------------------

def test_alias_lifecycle(directory: SQLiteDirectory) -> None:
    directory.add_alias("Team@Example.TEST",
                        ["alice@example.test", "Bob.Smith@Remote.TEST", "alice@EXAMPLE.test"])
    directory.add_alias("@example.test", ["postmaster@example.test"])
    assert directory.get_alias("team@example.test") == ["alice@example.test", "Bob.Smith@remote.test"]
    assert directory.get_alias("nobody@example.test") is None  # the catch-all is not an exact match
    assert directory.list_aliases() == [
        ("@example.test", ["postmaster@example.test"]),
        ("team@example.test", ["alice@example.test", "Bob.Smith@remote.test"]),
    ]
    directory.del_alias("TEAM@example.test")
    assert directory.get_alias("team@example.test") is None
    with pytest.raises(DirectoryError, match="no such alias"):
        directory.del_alias("team@example.test")


@pytest.mark.parametrize(("alias", "targets", "message"), [
    ("team@remote.test", ["a@example.test"], "not a local domain"),
    ("@remote.test", ["a@example.test"], "not a local domain"),
    ("team@example.test", [], "at least one target"),
    ("team@example.test", ["nobody"], "not a valid address"),
    ("team@example.test", ['"x y"@remote.test'], "plain local@domain"),
    ('"te am"@example.test', ["a@example.test"], "plain local@domain"),
])
def test_add_alias_refused(directory: SQLiteDirectory, alias: str, targets: list[str], message: str) -> None:
    with pytest.raises(DirectoryError, match=message):
        directory.add_alias(alias, targets)
    assert directory.list_aliases() == []


def test_add_alias_twice(directory: SQLiteDirectory) -> None:
    directory.add_alias("team@example.test", ["a@example.test"])
    with pytest.raises(DirectoryError, match="already exists"):
        directory.add_alias("TEAM@example.test", ["b@example.test"])
    assert directory.get_alias("team@example.test") == ["a@example.test"]


# -- the database file --------------------------------------------------------------------------

def test_database_file_is_private_and_in_wal_mode(directory: SQLiteDirectory, db_path: Path) -> None:
    directory.add_user("alice@example.test", PASSWORD)
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        columns = {row[1]: row for row in db.execute("PRAGMA table_info(users)")}
    assert columns["legacy_secret"][3] == 0  # nullable, reserved for CRAM-MD5/APOP
    db.close()


def test_changes_are_seen_by_other_openers_at_once(db_path: Path) -> None:
    with SQLiteDirectory(db_path, ["example.test"]) as server, \
         SQLiteDirectory(db_path, ["example.test"]) as admin:
        assert not server.user_exists("alice@example.test")
        admin.add_user("alice@example.test", PASSWORD)
        admin.add_domain("new.test")
        server.reload()  # SIGHUP; not needed for the change to be seen
        assert server.user_exists("alice@example.test")
        assert server.is_local_domain("new.test")


def test_concurrent_writers(db_path: Path) -> None:
    directories = [SQLiteDirectory(db_path) for _ in range(4)]
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: directories[i % 4].add_domain(f"d{i}.test"), range(40)))
        assert len(directories[0].list_domains()) == 40
    finally:
        for d in directories:
            d.close()


def test_newer_schema_is_refused(db_path: Path) -> None:
    SQLiteDirectory(db_path).close()
    with sqlite3.connect(db_path) as db:
        db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(DirectoryError, match="schema version 99"):
        SQLiteDirectory(db_path)


def test_unopenable_database_is_a_directory_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(DirectoryError, match="cannot open the directory"):
        SQLiteDirectory(tmp_path / "file" / "taube.db")
