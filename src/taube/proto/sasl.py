"""SASL server mechanisms, shared by SMTP AUTH (RFC 4954) and POP3 AUTH (RFC 5034).

Sans-I/O like the protocol engines: a mechanism takes the client's decoded responses and returns
a :class:`Step`: a :class:`Challenge` to send, a request for the session to look something up
(:class:`CheckPassword`, :class:`NeedSecret`, :class:`NeedScram`), or the outcome
(:class:`Success`, :class:`Failure`). Password hashing and directory look-ups stay outside, so a
slow argon2 verification never runs inside the protocol code.

Mechanisms: PLAIN (RFC 4616), LOGIN (draft-murchison-sasl-login), CRAM-MD5 (RFC 2195),
SCRAM-SHA-256 (RFC 5802, RFC 7677; no channel binding, so no -PLUS variant).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

__all__ = [
    "MECHANISMS",
    "Challenge",
    "CheckPassword",
    "Failure",
    "Mechanism",
    "NeedScram",
    "NeedSecret",
    "ScramCredentials",
    "Step",
    "Success",
    "create",
    "decode_response",
    "scram_credentials",
]

SCRAM_ITERATIONS = 4096  # RFC 7677 section 4: at least 4096


@dataclass(frozen=True, slots=True)
class Challenge:
    data: bytes


@dataclass(frozen=True, slots=True)
class CheckPassword:
    """The session must verify ``password`` for ``authcid`` and call ``mechanism.resolve(ok)``."""

    authcid: str
    authzid: str
    password: str


@dataclass(frozen=True, slots=True)
class NeedSecret:
    """CRAM-MD5: the session passes the user's plaintext-equivalent secret (or None) to resolve()."""

    username: str


@dataclass(frozen=True, slots=True)
class NeedScram:
    """SCRAM: the session passes the user's :class:`ScramCredentials` (or None) to resolve()."""

    username: str


@dataclass(frozen=True, slots=True)
class Success:
    authcid: str
    authzid: str


@dataclass(frozen=True, slots=True)
class Failure:
    """``malformed``: a protocol error (501 5.5.2), else bad credentials (535 5.7.8)."""

    reason: str
    malformed: bool = False


Step = Challenge | CheckPassword | NeedSecret | NeedScram | Success | Failure


@dataclass(frozen=True, slots=True)
class ScramCredentials:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def scram_credentials(password: str, salt: bytes | None = None,
                      iterations: int = SCRAM_ITERATIONS) -> ScramCredentials:
    """StoredKey and ServerKey of RFC 5802 section 3 for ``password`` (the password is not kept)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return ScramCredentials(salt, iterations, hashlib.sha256(client_key).digest(), server_key)


class Mechanism:
    """Base: ``start(initial)`` then ``respond(data)`` for each client line, ``resolve(x)`` for look-ups."""

    name = ""
    plaintext = False  # sends the password itself: only offered under TLS by default

    def start(self, initial: bytes | None) -> Step:
        raise NotImplementedError

    def respond(self, data: bytes) -> Step:
        return Failure("unexpected response", malformed=True)

    def resolve(self, answer: object) -> Step:
        return Failure("unexpected look-up answer", malformed=True)


def _text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


class Plain(Mechanism):
    """RFC 4616: ``authzid NUL authcid NUL passwd`` in one message."""

    name = "PLAIN"
    plaintext = True

    def __init__(self) -> None:
        self._identities: tuple[str, str] | None = None

    def start(self, initial: bytes | None) -> Step:
        return Challenge(b"") if initial is None else self.respond(initial)

    def respond(self, data: bytes) -> Step:
        parts = data.split(b"\x00")
        decoded = [_text(p) for p in parts]
        if len(parts) != 3 or None in decoded or not parts[1] or not parts[2]:
            return Failure("malformed PLAIN message", malformed=True)
        authzid, authcid, password = decoded  # type: ignore[misc]
        self._identities = (authcid, authzid)
        return CheckPassword(authcid=authcid, authzid=authzid, password=password)

    def resolve(self, answer: object) -> Step:
        if self._identities is None:
            return super().resolve(answer)
        authcid, authzid = self._identities
        if not answer:
            return Failure("bad credentials")
        if authzid and authzid.lower() != authcid.lower():
            return Failure("authorization identity differs from the user (no impersonation)")
        return Success(authcid=authcid, authzid=authzid or authcid)


class Login(Mechanism):
    """LOGIN: ``334 VXNlcm5hbWU6`` ("Username:"), then ``334 UGFzc3dvcmQ6`` ("Password:")."""

    name = "LOGIN"
    plaintext = True

    def __init__(self) -> None:
        self._user: str | None = None
        self._checking = False

    def start(self, initial: bytes | None) -> Step:
        return Challenge(b"Username:") if initial is None else self.respond(initial)

    def respond(self, data: bytes) -> Step:
        text = _text(data)
        if text is None or self._checking:
            return Failure("malformed LOGIN response", malformed=True)
        if self._user is None:
            if not text:
                return Failure("empty user name", malformed=True)
            self._user = text
            return Challenge(b"Password:")
        self._checking = True
        return CheckPassword(authcid=self._user, authzid="", password=text)

    def resolve(self, answer: object) -> Step:
        if not self._checking or self._user is None:
            return super().resolve(answer)
        return Success(authcid=self._user, authzid=self._user) if answer else Failure("bad credentials")


class CramMD5(Mechanism):
    """RFC 2195: challenge ``<random.time@host>``, response ``user HMAC-MD5(secret, challenge)``."""

    name = "CRAM-MD5"

    def __init__(self, hostname: str, challenge: bytes | None = None) -> None:
        self.challenge = challenge or f"<{secrets.randbelow(10**10)}.{secrets.randbelow(10**10)}@{hostname}>".encode()
        self._user: str | None = None
        self._digest = ""

    def start(self, initial: bytes | None) -> Step:
        if initial is not None:
            return Failure("CRAM-MD5 takes no initial response", malformed=True)
        return Challenge(self.challenge)

    def respond(self, data: bytes) -> Step:
        text = _text(data)
        if text is None or self._user is not None or " " not in text:
            return Failure("malformed CRAM-MD5 response", malformed=True)
        user, _, digest = text.rpartition(" ")
        if not user or len(digest) != 32:
            return Failure("malformed CRAM-MD5 response", malformed=True)
        self._user, self._digest = user, digest.lower()
        return NeedSecret(username=user)

    def resolve(self, answer: object) -> Step:
        if self._user is None:
            return super().resolve(answer)
        # An unknown user costs the same HMAC as a known one.
        secret = answer if isinstance(answer, str) else secrets.token_hex(16)
        expected = hmac.new(secret.encode("utf-8"), self.challenge, "md5").hexdigest()
        if hmac.compare_digest(expected, self._digest) and isinstance(answer, str):
            return Success(authcid=self._user, authzid=self._user)
        return Failure("bad credentials")


def _scram_name(text: str) -> str | None:
    """RFC 5802 5.1: ``=2C`` is ``,`` and ``=3D`` is ``=``; any other ``=`` is an error."""
    if re.search(r"=(?!2C|3D)", text):
        return None
    return text.replace("=2C", ",").replace("=3D", "=")


class ScramSHA256(Mechanism):
    """RFC 5802 / RFC 7677 server side, without channel binding."""

    name = "SCRAM-SHA-256"

    def __init__(self, fake_salt_key: bytes | None = None) -> None:
        self._fake_key = fake_salt_key or secrets.token_bytes(32)
        self._state = "start"
        self._gs2 = ""
        self._client_first_bare = ""
        self._nonce = ""
        self._user = ""
        self._authzid = ""
        self._creds: ScramCredentials | None = None
        self._server_first = ""
        self._server_signature = b""

    def start(self, initial: bytes | None) -> Step:
        return Challenge(b"") if initial is None else self.respond(initial)

    def respond(self, data: bytes) -> Step:
        text = _text(data)
        if text is None:
            return Failure("SCRAM messages are UTF-8", malformed=True)
        if self._state == "start":
            return self._client_first(text)
        if self._state == "final":
            return self._client_final(text)
        if self._state == "done":  # the client's empty answer to server-final
            return Success(authcid=self._user, authzid=self._authzid or self._user) if not text else \
                Failure("unexpected data after server-final", malformed=True)
        return Failure("unexpected response", malformed=True)

    def _client_first(self, text: str) -> Step:
        parts = text.split(",", 2)
        if len(parts) != 3 or parts[0] not in ("n", "y"):
            return Failure("bad gs2 header (channel binding is not supported)", malformed=True)
        authzid = ""
        if parts[1]:
            if not parts[1].startswith("a="):
                return Failure("bad authzid", malformed=True)
            authzid = _scram_name(parts[1][2:]) or ""
        self._gs2 = f"{parts[0]},{parts[1]},"
        self._client_first_bare = parts[2]
        attrs = dict(a.split("=", 1) for a in parts[2].split(",") if "=" in a)
        user = _scram_name(attrs.get("n", ""))
        if not user or not attrs.get("r") or parts[2].startswith("m="):
            return Failure("bad client-first-message", malformed=True)
        self._user, self._authzid = user, authzid
        self._nonce = attrs["r"] + base64.b64encode(secrets.token_bytes(18)).decode()
        self._state = "lookup"
        return NeedScram(username=user)

    def resolve(self, answer: object) -> Step:
        if self._state != "lookup":
            return super().resolve(answer)
        if isinstance(answer, ScramCredentials):
            self._creds = answer
            salt, iterations = answer.salt, answer.iterations
        else:  # unknown user: a stable fake salt so that nothing tells the user does not exist
            salt = hmac.digest(self._fake_key, self._user.encode("utf-8"), "sha256")[:16]
            iterations = SCRAM_ITERATIONS
        self._server_first = f"r={self._nonce},s={base64.b64encode(salt).decode()},i={iterations}"
        self._state = "final"
        return Challenge(self._server_first.encode())

    def _client_final(self, text: str) -> Step:
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        attrs = dict(a.split("=", 1) for a in without_proof.split(",") if "=" in a)
        if not sep or attrs.get("r") != self._nonce:
            return Failure("bad client-final-message", malformed=True)
        if attrs.get("c") != base64.b64encode(self._gs2.encode()).decode():
            return Failure("channel binding mismatch", malformed=True)
        try:
            proof = base64.b64decode(proof_b64, validate=True)
        except ValueError:
            return Failure("bad proof encoding", malformed=True)
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        creds = self._creds
        if creds is None or len(proof) != 32:
            return Failure("bad credentials")
        signature = hmac.digest(creds.stored_key, auth_message, "sha256")
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), creds.stored_key):
            return Failure("bad credentials")
        if self._authzid and self._authzid.lower() != self._user.lower():
            return Failure("authorization identity differs from the user (no impersonation)")
        self._server_signature = hmac.digest(creds.server_key, auth_message, "sha256")
        self._state = "done"
        return Challenge(b"v=" + base64.b64encode(self._server_signature))


MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256")


def decode_response(text: str) -> bytes | None:
    """A client's SASL response line (RFC 4954 4, RFC 5034 4): base64, with ``=`` standing for an
    empty initial response; None if it is not base64."""
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def create(name: str, *, hostname: str, fake_salt_key: bytes | None = None) -> Mechanism | None:
    """A fresh server mechanism by (case-insensitive) name, or None if unknown."""
    match name.upper():
        case "PLAIN":
            return Plain()
        case "LOGIN":
            return Login()
        case "CRAM-MD5":
            return CramMD5(hostname)
        case "SCRAM-SHA-256":
            return ScramSHA256(fake_salt_key)
    return None
