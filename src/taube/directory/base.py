"""The user directory: local domains, users with their password hashes, and aliases.

Addresses are compared in lower case, local part included: ``Alice@Example.TEST`` and
``alice@example.test`` are one user. RFC 5321 2.4 lets the receiving host decide how to treat the
case of its own local parts; Postfix and Dovecot fold them to lower case by default, and so does
taube. Addresses that leave the server (remote alias targets) keep their local part as written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol

from ..proto.address import AddressError, parse_path
from ..proto.sasl import ScramCredentials

__all__ = [
    "Directory",
    "DirectoryError",
    "normalize_address",
    "parse_mailbox",
    "split_address",
    "validate_domain",
]

# A host name as the configuration accepts it (ASCII labels; IDNs in their xn-- form).
_DOMAIN_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


class DirectoryError(Exception):
    """A directory operation cannot be done; the message is meant for the administrator."""


def normalize_address(address: str) -> str:
    """The form used for storage and look-up: the whole address in lower case."""
    return address.lower()


def split_address(address: str) -> tuple[str, str]:
    """``local@domain`` -> ``(local, domain)``, split at the last ``@`` (a quoted local part may
    contain ``@`` itself). Without ``@`` the local part is empty: nothing is guessed."""
    local, _, domain = address.rpartition("@")
    return local, domain


def validate_domain(domain: str) -> str:
    """An administrator-given domain name, normalised (lower case, no trailing dot)."""
    name = domain.strip().rstrip(".").lower()
    if not _DOMAIN_NAME.fullmatch(name):
        raise DirectoryError(f"{domain!r} is not a valid domain name")
    return name


def parse_mailbox(address: str) -> tuple[str, str]:
    """An administrator-given mailbox ``local@domain`` -> ``(local part as written, domain in
    lower case)``; raises :class:`DirectoryError`.

    The local part must be a plain dot-atom (RFC 5321 4.1.2 Dot-string): quoted local parts,
    angle brackets and source routes are refused here, so every address the directory holds can
    be written in a RCPT TO without quoting.
    """
    try:
        path = parse_path(address, utf8=True)
    except AddressError as e:
        raise DirectoryError(f"{address!r} is not a valid address: {e}") from None
    if path.quoted or address.startswith(("<", "@")):
        raise DirectoryError(f"{address!r} is not a valid address: use a plain local@domain")
    return path.local, path.domain.lower()


class Directory(Protocol):
    """Local domains, users and aliases. Every address argument is compared in lower case.

    Mutating methods raise :class:`DirectoryError` with a message for the administrator.
    """

    def is_local_domain(self, domain: str) -> bool:
        """Whether mail for ``domain`` is delivered here (configured or added domains)."""

    def list_domains(self) -> list[str]:
        """All local domains, sorted."""

    def add_domain(self, domain: str) -> None: ...

    def del_domain(self, domain: str) -> None:
        """Remove an added domain; refused for configured domains and while users or aliases
        remain in it."""

    def add_user(self, address: str, password: str) -> None:
        """Create a user in a local domain; the password itself is never stored."""

    def del_user(self, address: str) -> None: ...

    def set_password(self, address: str, password: str) -> None: ...

    def list_users(self, domain: str | None = None) -> list[str]:
        """User addresses, sorted; only those of ``domain`` if given."""

    def user_exists(self, address: str) -> bool: ...

    def verify_password(self, address: str, password: str) -> bool:
        """Whether ``password`` is the user's; costs the same for unknown users."""

    def legacy_secret(self, address: str) -> str | None:
        """The plaintext-equivalent secret for CRAM-MD5/APOP, None if not kept."""

    def scram_credentials(self, address: str) -> ScramCredentials | None:
        """The user's SCRAM-SHA-256 keys (RFC 5802 section 3), None for unknown users."""

    def add_alias(self, alias: str, targets: list[str]) -> None:
        """``alias`` is ``local@domain`` or the catch-all ``@domain`` in a local domain;
        ``targets`` are addresses anywhere."""

    def del_alias(self, alias: str) -> None: ...

    def list_aliases(self) -> list[tuple[str, list[str]]]:
        """``(alias, targets)`` pairs sorted by alias, targets in the order given."""

    def get_alias(self, address: str) -> list[str] | None:
        """The direct targets of the alias ``address`` (exact match, no catch-all), or None."""

    def reload(self, config_domains: Iterable[str] | None = None) -> None:
        """Pick up changes made outside this process and the configuration file's domains
        (called on SIGHUP)."""

    def close(self) -> None: ...
