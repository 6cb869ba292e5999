"""Password storage: an argon2id hash for plain-text logins, SCRAM-SHA-256 keys for SCRAM.

The SCRAM keys (RFC 5802 section 3, RFC 7677: random salt, 4096 iterations, StoredKey, ServerKey)
are computed by :func:`taube.proto.sasl.scram_credentials`, the same code that checks them in
SCRAM-SHA-256 logins.

The password itself is never kept. Both forms are derived from the password after SASLprep
(RFC 4013), the preparation RFC 5802 section 2.2 prescribes for SCRAM and RFC 4616 section 2 for
PLAIN, so a password typed with a compatibility character (a ligature, a non-ASCII space) works
the same whichever mechanism a client picks.

argon2id parameters follow the OWASP Password Storage Cheat Sheet's first configuration (19 MiB,
2 passes, 1 lane): a mail server verifies a password on many logins, so each verification must
stay in the tens of milliseconds. The parameters are recorded in every hash (PHC string format),
so changing them later keeps existing hashes valid.
"""

from __future__ import annotations

import stringprep
import unicodedata
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from ..proto.sasl import ScramCredentials, scram_credentials

__all__ = [
    "DUMMY_HASH",
    "HASHER",
    "PasswordRecord",
    "UnusablePassword",
    "hash_password",
    "saslprep",
    "verify_password",
]

HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1, hash_len=32, salt_len=16,
                        type=Type.ID)
# A hash of a random, forgotten password with HASHER's parameters. Unknown users are verified
# against it, so a wrong user name costs exactly as much as a wrong password.
DUMMY_HASH = "$argon2id$v=19$m=19456,t=2,p=1$CHrIlCAOvV2sPJdvv5okcQ$GpXMkAjjj5JBU1lOKBxEV02LDhD4e6egqNVEvFEbP3s"

# RFC 4013 section 2.3: the tables of characters SASLprep prohibits (C.1.2 is mapped away first).
_PROHIBITED = (
    stringprep.in_table_c12, stringprep.in_table_c21, stringprep.in_table_c22,
    stringprep.in_table_c3, stringprep.in_table_c4, stringprep.in_table_c5,
    stringprep.in_table_c6, stringprep.in_table_c7, stringprep.in_table_c8,
    stringprep.in_table_c9,
)


class UnusablePassword(ValueError):
    """The password cannot be stored (empty, or refused by SASLprep); the message says why."""


@dataclass(frozen=True, slots=True)
class PasswordRecord:
    """Everything stored for a password: the argon2id PHC string and the SCRAM keys."""

    argon2_hash: str
    scram: ScramCredentials


def saslprep(text: str) -> str:
    """SASLprep (RFC 4013), the stringprep profile (RFC 3454) for user names and passwords.

    Raises :class:`UnusablePassword` for prohibited, unassigned or badly mixed bidirectional
    characters. Unassigned code points are refused as RFC 4013 section 2.5 requires for stored
    strings; the same function prepares presented passwords, which then simply do not match.
    """
    mapped = "".join(_map_character(c) for c in text)
    prepared = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)  # RFC 4013 2.2: Unicode 3.2 NFKC
    for c in prepared:
        if any(table(c) for table in _PROHIBITED):
            raise UnusablePassword(f"the password contains a prohibited character U+{ord(c):04X}")
        if stringprep.in_table_a1(c):
            raise UnusablePassword(f"the password contains an unassigned character U+{ord(c):04X}")
    _check_bidi(prepared)
    return prepared


def _map_character(c: str) -> str:
    """RFC 4013 2.1: non-ASCII spaces (C.1.2) become SPACE, B.1 characters are removed."""
    if stringprep.in_table_c12(c):
        return " "
    if stringprep.in_table_b1(c):
        return ""
    return c


def _check_bidi(text: str) -> None:
    """RFC 3454 section 6: right-to-left text must not mix with left-to-right characters and
    must start and end with a right-to-left character."""
    rtl = [stringprep.in_table_d1(c) for c in text]
    if not any(rtl):
        return
    if any(stringprep.in_table_d2(c) for c in text) or not (rtl[0] and rtl[-1]):
        raise UnusablePassword("the password mixes right-to-left and left-to-right text")


def hash_password(password: str) -> PasswordRecord:
    """Derive what is stored for ``password``; raises :class:`UnusablePassword`."""
    if not password:
        raise UnusablePassword("the password is empty")
    prepared = saslprep(password)
    if not prepared:
        raise UnusablePassword("the password is empty after SASLprep (RFC 4013)")
    return PasswordRecord(HASHER.hash(prepared), scram_credentials(prepared))


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored_hash``; ``None`` (no such user) and passwords that
    SASLprep refuses are checked against :data:`DUMMY_HASH`, so every failure costs one argon2
    verification. argon2 compares the digests in constant time."""
    try:
        prepared = saslprep(password)
    except UnusablePassword:
        stored_hash, prepared = None, password
    try:
        return HASHER.verify(stored_hash or DUMMY_HASH, prepared) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False
