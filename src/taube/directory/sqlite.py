"""The directory in one SQLite database, ``<data_dir>/taube.db``.

Several processes use the file at once (the server reads, ``taube user add`` writes): the database
is in WAL mode, so readers never wait for a writer, writers take the write lock at the start of
their transaction (``BEGIN IMMEDIATE``) and wait up to :data:`BUSY_TIMEOUT_MS` for each other.
Nothing is cached, so a change made by the command line is seen by the next look-up of the
running server. One connection per object, shared by threads under a lock; argon2 verification
runs outside the lock.
"""

from __future__ import annotations

import base64
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from ..proto.sasl import ScramCredentials
from .base import DirectoryError, normalize_address, parse_mailbox, validate_domain
from .passwords import PasswordRecord, UnusablePassword, hash_password, verify_password

__all__ = ["SQLiteDirectory"]

BUSY_TIMEOUT_MS = 10_000
SCHEMA_VERSION = 1

# Addresses (users.address, aliases.address) are stored normalised (lower case); alias targets
# keep the local part as written. An alias has one row per target; address "@domain" is the
# domain's catch-all. legacy_secret is reserved for CRAM-MD5/APOP (plaintext-equivalent secrets).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS domains (
    name TEXT PRIMARY KEY
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (
    address TEXT PRIMARY KEY,
    domain TEXT NOT NULL,
    argon2_hash TEXT NOT NULL,
    scram_salt TEXT NOT NULL,
    scram_iterations INTEGER NOT NULL,
    scram_stored_key TEXT NOT NULL,
    scram_server_key TEXT NOT NULL,
    legacy_secret TEXT
);
CREATE INDEX IF NOT EXISTS users_domain ON users (domain);
CREATE TABLE IF NOT EXISTS aliases (
    address TEXT NOT NULL,
    domain TEXT NOT NULL,
    position INTEGER NOT NULL,
    target TEXT NOT NULL,
    PRIMARY KEY (address, position)
);
CREATE INDEX IF NOT EXISTS aliases_domain ON aliases (domain);
"""


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """A write transaction: the write lock is taken at once (waiting up to the busy timeout),
    committed at the end, rolled back if the body raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _alias_address(alias: str) -> tuple[str, str]:
    """``local@domain`` or the catch-all ``@domain`` -> (normalised alias, its domain)."""
    if alias.startswith("@"):
        domain = validate_domain(alias[1:])
        return f"@{domain}", domain
    local, domain = parse_mailbox(alias)
    return normalize_address(f"{local}@{domain}"), domain


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _normalize_target(target: str) -> str:
    """An alias target as stored: validated, domain in lower case, local part as written
    (RFC 5321 2.4: only the destination host may interpret its local parts' case)."""
    local, domain = parse_mailbox(target)
    return f"{local}@{domain}"


class SQLiteDirectory:
    """:class:`~taube.directory.base.Directory` on SQLite. ``config_domains`` are the local
    domains of the configuration file; more are added with :meth:`add_domain`."""

    def __init__(self, path: Path, config_domains: Iterable[str] = (), *,
                 legacy_secrets: bool = False) -> None:
        """``legacy_secrets``: also keep each new password as a plaintext-equivalent secret for
        CRAM-MD5 and APOP (``[auth] legacy_secrets``); off, new passwords clear it."""
        self.path = Path(path)
        self._config_domains = frozenset(d.lower() for d in config_domains)
        self._legacy_secrets = legacy_secrets
        self._lock = threading.Lock()
        self._db = self._connect()

    # -- connection and transactions --------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            return self._open()
        except (OSError, sqlite3.Error) as e:
            raise DirectoryError(f"cannot open the directory {self.path}: {e}") from None

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._create_private_file()
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                             check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            self._migrate(db)
        except BaseException:
            db.close()
            raise
        return db

    def _create_private_file(self) -> None:
        """Create the database readable by its owner only (password hashes live there);
        SQLite gives its -wal and -shm files the same mode."""
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Create the schema in a new database; refuse one written by a newer taube."""
        with _transaction(db):
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise DirectoryError(f"{self.path} has schema version {version}; this taube knows "
                                     f"up to {SCHEMA_VERSION}")
            if version < SCHEMA_VERSION:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as e:
                raise DirectoryError(f"directory {self.path}: {e}") from None

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        with self._reading() as db, _transaction(db):
            yield db

    def reload(self, config_domains: Iterable[str] | None = None) -> None:
        """Take new configuration-file domains (SIGHUP). Nothing else is cached: every look-up
        reads the database, so users and aliases changed by the CLI are seen at once."""
        if config_domains is not None:
            self._config_domains = frozenset(d.lower() for d in config_domains)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SQLiteDirectory:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- domains ----------------------------------------------------------------------------

    def is_local_domain(self, domain: str) -> bool:
        with self._reading() as db:
            return self._is_local(db, domain.lower())

    def _is_local(self, db: sqlite3.Connection, domain: str) -> bool:
        if domain in self._config_domains:
            return True
        return db.execute("SELECT 1 FROM domains WHERE name = ?", (domain,)).fetchone() is not None

    def list_domains(self) -> list[str]:
        with self._reading() as db:
            added = {name for (name,) in db.execute("SELECT name FROM domains")}
        return sorted(added | self._config_domains)

    def add_domain(self, domain: str) -> None:
        name = validate_domain(domain)
        if name in self._config_domains:
            raise DirectoryError(f"{name} is already a local domain (configuration file)")
        with self._writing() as db:
            if db.execute("INSERT OR IGNORE INTO domains (name) VALUES (?)", (name,)).rowcount == 0:
                raise DirectoryError(f"{name} is already a local domain")

    def del_domain(self, domain: str) -> None:
        name = validate_domain(domain)
        if name in self._config_domains:
            raise DirectoryError(f"{name} is set in the configuration file; remove it there")
        with self._writing() as db:
            self._check_domain_empty(db, name)
            if db.execute("DELETE FROM domains WHERE name = ?", (name,)).rowcount == 0:
                raise DirectoryError(f"{name} is not a local domain")

    def _check_domain_empty(self, db: sqlite3.Connection, name: str) -> None:
        users = db.execute("SELECT count(*) FROM users WHERE domain = ?", (name,)).fetchone()[0]
        aliases = db.execute("SELECT count(DISTINCT address) FROM aliases WHERE domain = ?",
                             (name,)).fetchone()[0]
        if users or aliases:
            raise DirectoryError(f"{name} still has {users} user(s) and {aliases} alias(es); "
                                 "delete them first")

    def _require_local(self, db: sqlite3.Connection, domain: str) -> None:
        if not self._is_local(db, domain):
            raise DirectoryError(f"{domain} is not a local domain (add it with: taube domain add {domain})")

    # -- users ------------------------------------------------------------------------------

    def add_user(self, address: str, password: str) -> None:
        local, domain = parse_mailbox(address)
        normalized = normalize_address(f"{local}@{domain}")
        record = self._hash(password)
        with self._writing() as db:
            self._require_local(db, domain)
            inserted = db.execute(
                "INSERT OR IGNORE INTO users (address, domain, argon2_hash, scram_salt, "
                "scram_iterations, scram_stored_key, scram_server_key, legacy_secret) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (normalized, domain, *self._password_columns(record), self._legacy(password)),
            ).rowcount
            if not inserted:
                raise DirectoryError(f"user {normalized} already exists")

    def del_user(self, address: str) -> None:
        normalized = normalize_address(address)
        with self._writing() as db:
            if db.execute("DELETE FROM users WHERE address = ?", (normalized,)).rowcount == 0:
                raise DirectoryError(f"no such user: {normalized}")

    def set_password(self, address: str, password: str) -> None:
        normalized = normalize_address(address)
        record = self._hash(password)
        with self._writing() as db:
            updated = db.execute(
                "UPDATE users SET argon2_hash = ?, scram_salt = ?, scram_iterations = ?, "
                "scram_stored_key = ?, scram_server_key = ?, legacy_secret = ? WHERE address = ?",
                (*self._password_columns(record), self._legacy(password), normalized),
            ).rowcount
            if not updated:
                raise DirectoryError(f"no such user: {normalized}")

    def _legacy(self, password: str) -> str | None:
        return password if self._legacy_secrets else None

    def legacy_secret(self, address: str) -> str | None:
        """The plaintext-equivalent secret for CRAM-MD5/APOP, if kept (see ``__init__``)."""
        if not self._legacy_secrets:
            return None
        with self._reading() as db:
            row = db.execute("SELECT legacy_secret FROM users WHERE address = ?",
                             (normalize_address(address),)).fetchone()
        return row[0] if row else None

    @staticmethod
    def _hash(password: str) -> PasswordRecord:
        try:
            return hash_password(password)
        except UnusablePassword as e:
            raise DirectoryError(str(e)) from None

    @staticmethod
    def _password_columns(record: PasswordRecord) -> tuple[str, str, int, str, str]:
        scram = record.scram
        return (record.argon2_hash, _b64(scram.salt), scram.iterations, _b64(scram.stored_key),
                _b64(scram.server_key))

    def list_users(self, domain: str | None = None) -> list[str]:
        with self._reading() as db:
            if domain is None:
                rows = db.execute("SELECT address FROM users ORDER BY address")
            else:
                rows = db.execute("SELECT address FROM users WHERE domain = ? ORDER BY address",
                                  (domain.lower(),))
            return [address for (address,) in rows]

    def user_exists(self, address: str) -> bool:
        with self._reading() as db:
            row = db.execute("SELECT 1 FROM users WHERE address = ?", (normalize_address(address),))
            return row.fetchone() is not None

    def verify_password(self, address: str, password: str) -> bool:
        with self._reading() as db:
            row = db.execute("SELECT argon2_hash FROM users WHERE address = ?",
                             (normalize_address(address),)).fetchone()
        return verify_password(row[0] if row else None, password)

    def scram_credentials(self, address: str) -> ScramCredentials | None:
        with self._reading() as db:
            row = db.execute(
                "SELECT scram_salt, scram_iterations, scram_stored_key, scram_server_key "
                "FROM users WHERE address = ?", (normalize_address(address),)).fetchone()
        if row is None:
            return None
        salt, iterations, stored_key, server_key = row
        return ScramCredentials(base64.b64decode(salt), iterations, base64.b64decode(stored_key),
                                base64.b64decode(server_key))

    # -- aliases ----------------------------------------------------------------------------

    def add_alias(self, alias: str, targets: list[str]) -> None:
        normalized, domain = _alias_address(alias)
        members = list(dict.fromkeys(_normalize_target(t) for t in targets))
        if not members:
            raise DirectoryError(f"alias {normalized} needs at least one target")
        with self._writing() as db:
            self._require_local(db, domain)
            if db.execute("SELECT 1 FROM aliases WHERE address = ?", (normalized,)).fetchone():
                raise DirectoryError(f"alias {normalized} already exists; delete it first")
            db.executemany("INSERT INTO aliases (address, domain, position, target) VALUES (?, ?, ?, ?)",
                           [(normalized, domain, i, t) for i, t in enumerate(members)])

    def del_alias(self, alias: str) -> None:
        normalized = normalize_address(alias)
        with self._writing() as db:
            if db.execute("DELETE FROM aliases WHERE address = ?", (normalized,)).rowcount == 0:
                raise DirectoryError(f"no such alias: {normalized}")

    def list_aliases(self) -> list[tuple[str, list[str]]]:
        aliases: dict[str, list[str]] = {}
        with self._reading() as db:
            for address, target in db.execute("SELECT address, target FROM aliases "
                                              "ORDER BY address, position"):
                aliases.setdefault(address, []).append(target)
        return list(aliases.items())

    def get_alias(self, address: str) -> list[str] | None:
        with self._reading() as db:
            rows = db.execute("SELECT target FROM aliases WHERE address = ? ORDER BY position",
                              (normalize_address(address),)).fetchall()
        return [target for (target,) in rows] or None
