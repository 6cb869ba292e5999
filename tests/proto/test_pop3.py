"""The POP3 engine (RFC 1939, RFC 2449, RFC 2595, RFC 5034) driven like a POP3 session would.

:class:`Server` plays the session side: a directory of users, a maildrop per user, MD5 for APOP,
and message content streamed in chunks of a chosen size.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taube.proto import sasl
from taube.proto.pop3 import (
    NEED_DATA,
    ApopLogin,
    AuthLookup,
    Closed,
    Decision,
    Event,
    LocalProtocolError,
    Login,
    LoginFailed,
    MailboxOpen,
    POP3Config,
    POP3Connection,
    Retrieve,
    StartTLS,
    State,
    Update,
)
from tests.proto.helpers import reads, run_engine

SEED_USER = "benutzer@zeitform.de"
SEED_PASSWORD = "geheimes_passwort"
SEED_TIMESTAMP = "<1017.997873531@mail.zeitform-services.de>"
RFC_TIMESTAMP = "<1896.697170952@dbc.mtview.ca.us>"
PLAIN_SEED = b"AGJlbnV0emVyQHplaXRmb3JtLmRlAGdlaGVpbWVzX3Bhc3N3b3J0"
MSG1 = b"Subject: one\r\n\r\nfirst line\r\n.\r\n.foo\r\nlast\r\n"
MSG2 = b"Subject: two\r\nFrom: a@b.c\r\n\r\nbody 1\r\nbody 2\r\nbody 3\r\n"


def config(**kw) -> POP3Config:
    values = {"hostname": "pop.test", "timestamp": SEED_TIMESTAMP, "tls_available": True,
              "tls_active": True, "sasl_mechanisms": ("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"),
              "apop": True}
    values.update(kw)
    return POP3Config(**values)


def apop_digest(timestamp: str, secret: str) -> str:
    """The session-side APOP check (RFC 1939 section 7): MD5 over timestamp and secret."""
    return hashlib.md5((timestamp + secret).encode()).hexdigest()


@dataclass
class Server:
    """The session side of the engine: policy, directory and maildrops."""

    users: dict[str, str] = field(default_factory=lambda: {SEED_USER: SEED_PASSWORD})
    maildrops: dict[str, list[tuple[str, bytes]]] = field(
        default_factory=lambda: {SEED_USER: [("uid-1", MSG1), ("uid-2", MSG2)]})
    chunk: int = 1 << 20
    locked: bool = False
    removal_fails: bool = False
    removed: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def run(self, conn: POP3Connection, data: bytes, *, bytewise: bool = False) -> bytes:
        """Feed ``data`` (then EOF), answer every decision; return what the server sent."""
        greeting = conn.data_to_send()
        out, events = run_engine(conn, reads(data, bytewise), lambda event: self.handle(conn, event))
        self.events += events
        return greeting + out

    def handle(self, conn: POP3Connection, event: Event) -> None:
        if isinstance(event, Decision):
            self.answer(conn, event)

    def answer(self, conn: POP3Connection, event: Decision) -> None:
        match event:
            case Login(user=user, password=password):
                conn.accept() if self.users.get(user) == password else conn.reject()
            case ApopLogin(user=user, digest=digest, timestamp=timestamp):
                secret = self.users.get(user)
                conn.accept() if secret and apop_digest(timestamp, secret) == digest else conn.reject()
            case AuthLookup(request=request):
                conn.auth_resolve(self.lookup(request))
            case MailboxOpen(user=user):
                if self.locked:
                    conn.reject("[IN-USE] Mailbox is locked by another POP3 session")
                else:
                    conn.accept_mailbox([(len(body), uid) for uid, body in self.maildrops.get(user, [])])
            case Retrieve(uid=uid):
                self.stream(conn, uid)
            case StartTLS():
                conn.accept()
                conn.tls_started()  # the handshake succeeds
            case Update(deleted_uids=uids):
                if self.removal_fails:
                    conn.reject()
                else:
                    self.removed += uids
                    conn.accept()

    def lookup(self, request: object) -> object:
        match request:
            case sasl.CheckPassword(authcid=user, password=password):
                return self.users.get(user) == password
            case sasl.NeedSecret(username=user):
                return self.users.get(user)
            case sasl.NeedScram(username=user):
                return sasl.scram_credentials(self.users[user]) if user in self.users else None
        raise AssertionError(request)

    def stream(self, conn: POP3Connection, uid: str) -> None:
        body = dict(sum(self.maildrops.values(), []))[uid]
        conn.accept()
        for i in range(0, len(body), self.chunk):
            if not conn.wants_content:
                break
            conn.send_content(body[i:i + self.chunk])
        conn.end_content()


def dialogue(data: bytes, cfg: POP3Config | None = None, **server) -> tuple[bytes, Server]:
    """Run ``data`` whole and byte by byte; both must give the same output and events."""
    results = []
    for bytewise in (False, True):
        srv = Server(**server)
        out = srv.run(POP3Connection(cfg or config()), data, bytewise=bytewise)
        results.append((out, srv))
    (whole, srv), (bytewise_out, srv2) = results
    assert whole == bytewise_out
    assert srv.events == srv2.events
    return whole, srv


def status(out: bytes) -> list[str]:
    """The status lines (``+OK``/``-ERR``/``+ ``) without their text after the first word."""
    return [line.split(" ")[0] for line in out.decode("utf-8", "replace").split("\r\n")
            if line.startswith(("+OK", "-ERR", "+ "))]


LOGIN = f"USER {SEED_USER}\r\nPASS {SEED_PASSWORD}\r\n".encode()
GREETING = f"+OK taube ready {SEED_TIMESTAMP}\r\n".encode()
WELCOME = f"+OK {SEED_USER}'s maildrop has 2 messages ({len(MSG1) + len(MSG2)} octets)\r\n".encode()


# --- table-driven dialogues ----------------------------------------------------------------
TABLE = [
    # (name, client lines, expected server output after the greeting and login)
    ("stat", b"STAT\r\nQUIT\r\n", f"+OK 2 {len(MSG1) + len(MSG2)}\r\n".encode()
     + b"+OK pop.test POP3 server signing off (2 messages left)\r\n"),
    ("list", b"LIST\r\nLIST 2\r\nQUIT\r\n",
     f"+OK 2 messages ({len(MSG1) + len(MSG2)} octets)\r\n1 {len(MSG1)}\r\n2 {len(MSG2)}\r\n.\r\n"
     f"+OK 2 {len(MSG2)}\r\n".encode() + b"+OK pop.test POP3 server signing off (2 messages left)\r\n"),
    ("uidl", b"UIDL\r\nuidl 1\r\nQUIT\r\n",
     b"+OK unique-id listing follows\r\n1 uid-1\r\n2 uid-2\r\n.\r\n+OK 1 uid-1\r\n"
     b"+OK pop.test POP3 server signing off (2 messages left)\r\n"),
    ("bad numbers", b"LIST 0\r\nLIST 3\r\nRETR x\r\nDELE -1\r\nUIDL 99999999999999999999\r\nQUIT\r\n",
     b"-ERR no such message\r\n" * 5 + b"+OK pop.test POP3 server signing off (2 messages left)\r\n"),
    ("dele", b"DELE 2\r\nDELE 2\r\nLIST 2\r\nRETR 2\r\nSTAT\r\nLIST\r\nQUIT\r\n",
     b"+OK message 2 deleted\r\n" + b"-ERR message 2 already deleted\r\n" * 3
     + f"+OK 1 {len(MSG1)}\r\n+OK 1 message ({len(MSG1)} octets)\r\n1 {len(MSG1)}\r\n.\r\n".encode()
     + b"+OK pop.test POP3 server signing off (1 message left)\r\n"),
    ("rset", b"DELE 1\r\nDELE 2\r\nRSET\r\nSTAT\r\nQUIT\r\n",
     b"+OK message 1 deleted\r\n+OK message 2 deleted\r\n"
     + f"+OK maildrop has 2 messages ({len(MSG1) + len(MSG2)} octets)\r\n".encode()
     + f"+OK 2 {len(MSG1) + len(MSG2)}\r\n".encode()
     + b"+OK pop.test POP3 server signing off (2 messages left)\r\n"),
    ("noop and case", b"noop\r\nNoOp\r\nquit\r\n",
     b"+OK\r\n+OK\r\n+OK pop.test POP3 server signing off (2 messages left)\r\n"),
    ("syntax", b"STAT 1\r\nTOP 1\r\nTOP 1 x\r\nRETR\r\nLIST 1 2\r\nQUIT\r\n",
     b"-ERR syntax: STAT\r\n-ERR syntax: TOP msg n\r\n-ERR syntax: TOP msg n\r\n-ERR syntax: RETR msg\r\n"
     b"-ERR syntax: LIST [msg]\r\n+OK pop.test POP3 server signing off (2 messages left)\r\n"),
    ("wrong state", b"USER x\r\nSTLS\r\nAUTH PLAIN\r\nXYZZY\r\nQUIT\r\n",
     b"-ERR already logged in\r\n" * 3 + b"-ERR unknown command\r\n"
     b"+OK pop.test POP3 server signing off (2 messages left)\r\n"),
    ("retr", b"RETR 1\r\nQUIT\r\n",
     f"+OK {len(MSG1)} octets\r\n".encode() + b"Subject: one\r\n\r\nfirst line\r\n..\r\n..foo\r\nlast\r\n.\r\n"
     b"+OK pop.test POP3 server signing off (2 messages left)\r\n"),
    ("top", b"TOP 2 1\r\nTOP 2 0\r\nTOP 1 2\r\nTOP 2 99\r\nQUIT\r\n",
     b"+OK top of message follows\r\nSubject: two\r\nFrom: a@b.c\r\n\r\nbody 1\r\n.\r\n"
     b"+OK top of message follows\r\nSubject: two\r\nFrom: a@b.c\r\n\r\n.\r\n"
     b"+OK top of message follows\r\nSubject: one\r\n\r\nfirst line\r\n..\r\n.\r\n"
     b"+OK top of message follows\r\n" + MSG2 + b".\r\n"
     b"+OK pop.test POP3 server signing off (2 messages left)\r\n"),
    ("capa in transaction", b"CAPA\r\nQUIT\r\n",
     b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n"
     b"EXPIRE NEVER\r\nLOGIN-DELAY 0\r\nIMPLEMENTATION taube\r\n.\r\n"
     b"+OK pop.test POP3 server signing off (2 messages left)\r\n"),
]


@pytest.mark.parametrize(("name", "lines", "expected"), TABLE, ids=[t[0] for t in TABLE])
@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_transaction_dialogues(name: str, lines: bytes, expected: bytes, chunk: int) -> None:
    out, _ = dialogue(LOGIN + lines, chunk=chunk)
    assert out == GREETING + b"+OK send PASS\r\n" + WELCOME + expected


def test_rfc1939_example_dialogue() -> None:
    """RFC 1939 section 10, with the APOP digest of section 7 checked by the session side."""
    assert apop_digest(RFC_TIMESTAMP, "tanstaaf") == "c4c9334bac560ecc979e58001b3e22fb"
    msg1, msg2 = b"X" * 118 + b"\r\n", b"Y" * 198 + b"\r\n"
    client = (b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\nSTAT\r\nLIST\r\nRETR 1\r\nDELE 1\r\n"
              b"RETR 2\r\nDELE 2\r\nQUIT\r\n")
    out, srv = dialogue(client, config(hostname="dewey", timestamp=RFC_TIMESTAMP, tls_active=False),
                        users={"mrose": "tanstaaf"}, maildrops={"mrose": [("a", msg1), ("b", msg2)]})
    assert out == (
        b"+OK taube ready <1896.697170952@dbc.mtview.ca.us>\r\n"
        b"+OK mrose's maildrop has 2 messages (320 octets)\r\n"
        b"+OK 2 320\r\n"
        b"+OK 2 messages (320 octets)\r\n1 120\r\n2 200\r\n.\r\n"
        b"+OK 120 octets\r\n" + msg1 + b".\r\n"
        b"+OK message 1 deleted\r\n"
        b"+OK 200 octets\r\n" + msg2 + b".\r\n"
        b"+OK message 2 deleted\r\n"
        b"+OK dewey POP3 server signing off (maildrop empty)\r\n")
    assert srv.removed == ["a", "b"]


def test_apop_with_the_seed_timestamp() -> None:
    """The seed document's APOP example claims MD5(``<1017.997873531@mail.zeitform-services.de>``
    + ``geheimes_passwort``) = ``69cd75fb958e7958da34922f05cc3057``. It does NOT verify: that MD5
    is ``ff6ed41840dbfbff9c88ba38dc96497b``. We test the seed's timestamp with the real digest,
    and the document's digest must be refused; RFC 1939's own example is the second vector."""
    assert apop_digest(SEED_TIMESTAMP, SEED_PASSWORD) == "ff6ed41840dbfbff9c88ba38dc96497b"
    out, srv = dialogue(f"APOP {SEED_USER} FF6ED41840DBFBFF9C88BA38DC96497B\r\nQUIT\r\n".encode())
    assert out.split(b"\r\n")[1] == WELCOME.rstrip()
    assert [e.digest for e in srv.events if isinstance(e, ApopLogin)] == ["ff6ed41840dbfbff9c88ba38dc96497b"]
    out, srv = dialogue(f"APOP {SEED_USER} 69cd75fb958e7958da34922f05cc3057\r\nQUIT\r\n".encode())
    assert b"-ERR [AUTH] Authentication failed\r\n" in out
    assert [e for e in srv.events if isinstance(e, LoginFailed)] == [
        LoginFailed(user=SEED_USER, reason="bad credentials")]


def test_apop_syntax_and_when_not_offered() -> None:
    out, _ = dialogue(b"APOP mrose nothex\r\nAPOP mrose\r\nQUIT\r\n")
    assert status(out) == ["+OK", "-ERR", "-ERR", "+OK"]
    out, _ = dialogue(f"APOP {SEED_USER} ff6ed41840dbfbff9c88ba38dc96497b\r\nQUIT\r\n".encode(),
                      config(apop=False))
    assert b"-ERR APOP is not offered here\r\n" in out


# --- USER/PASS, SASL, STLS -----------------------------------------------------------------
def test_plain_user_before_tls_is_refused() -> None:
    out, srv = dialogue(LOGIN + b"QUIT\r\n", config(tls_active=False))
    assert out.count(b"-ERR [AUTH] Plaintext authentication disallowed without TLS (use STLS first)") == 2
    assert not any(isinstance(e, Login) for e in srv.events)
    out, _ = dialogue(LOGIN + b"QUIT\r\n", config(tls_active=False, plaintext_requires_tls=False))
    assert WELCOME in out


def test_user_pass_errors() -> None:
    out, srv = dialogue(b"PASS x\r\nUSER a b\r\nUSER u\r\nCAPA\r\nPASS x\r\n"
                        + f"USER {SEED_USER}\r\nPASS wrong\r\nQUIT\r\n".encode())
    assert b"-ERR USER first\r\n-ERR syntax: USER name\r\n+OK send PASS\r\n" in out
    assert out.count(b"-ERR USER first") == 2  # PASS must follow USER directly
    assert b"-ERR [AUTH] Authentication failed\r\n" in out
    assert [e for e in srv.events if isinstance(e, LoginFailed)] == [
        LoginFailed(user=SEED_USER, reason="bad credentials")]


def test_password_keeps_its_spaces() -> None:
    out, srv = dialogue(b"USER u\r\nPASS  two words \r\nQUIT\r\n", users={"u": " two words "},
                        maildrops={})
    assert b"+OK u's maildrop has 0 messages (0 octets)\r\n" in out


def test_login_failed_comes_before_the_reply_is_flushed() -> None:
    conn = POP3Connection(config())
    conn.data_to_send()
    conn.receive_data(b"USER u\r\nPASS p\r\n")
    assert isinstance(conn.next_event(), Login)
    conn.reject()
    assert conn.next_event() == LoginFailed(user="u", reason="bad credentials")
    assert conn.data_to_send() == b"+OK send PASS\r\n-ERR [AUTH] Authentication failed\r\n"
    conn.receive_data(b"USER u\r\nPASS p\r\n")
    conn.next_event()
    conn.reject("[SYS/TEMP] Directory unavailable")
    assert conn.next_event() == LoginFailed(user="u", reason="[SYS/TEMP] Directory unavailable")


def test_mailbox_in_use_and_sys_temp() -> None:
    out, srv = dialogue(LOGIN + b"STAT\r\nQUIT\r\n", locked=True)
    assert out.endswith(b"-ERR [IN-USE] Mailbox is locked by another POP3 session\r\n"
                        b"-ERR log in first\r\n+OK pop.test POP3 server signing off\r\n")
    assert not any(isinstance(e, (LoginFailed, Update)) for e in srv.events)
    conn = POP3Connection(config())
    conn.receive_data(LOGIN)
    conn.next_event()
    conn.accept()
    assert isinstance(conn.next_event(), MailboxOpen)
    with pytest.raises(LocalProtocolError):
        conn.accept()
    conn.reject()
    assert conn.data_to_send().endswith(b"-ERR [SYS/TEMP] Unable to open the maildrop\r\n")


def test_seed_sasl_plain_initial_response_and_after_challenge() -> None:
    out, _ = dialogue(b"AUTH PLAIN " + PLAIN_SEED + b"\r\nQUIT\r\n")
    assert out.split(b"\r\n")[1] == WELCOME.rstrip()
    out, _ = dialogue(b"AUTH PLAIN\r\n" + PLAIN_SEED + b"\r\nQUIT\r\n")
    assert out.split(b"\r\n")[1:3] == [b"+ ", WELCOME.rstrip()]


def test_seed_sasl_login() -> None:
    out, _ = dialogue(b"AUTH LOGIN\r\nYmVudXR6ZXJAemVpdGZvcm0uZGU=\r\nZ2VoZWltZXNfcGFzc3dvcnQ=\r\nQUIT\r\n")
    assert out.split(b"\r\n")[1:4] == [b"+ VXNlcm5hbWU6", b"+ UGFzc3dvcmQ6", WELCOME.rstrip()]


@pytest.mark.parametrize(("lines", "reply"), [
    (b"AUTH PLAIN AGJlbnV0emVyQHplaXRmb3JtLmRlAHdyb25n\r\n", b"-ERR [AUTH] Authentication failed"),
    (b"AUTH PLAIN !!!\r\n", b"-ERR bad base64 in the initial response"),
    (b"AUTH LOGIN\r\n*\r\n", b"-ERR authentication cancelled"),
    (b"AUTH LOGIN\r\n@@@\r\n", b"-ERR bad base64 in the response"),
    (b"AUTH PLAIN AGZvbw==\r\n", b"-ERR malformed SASL response"),
    (b"AUTH FOOBAR\r\n", b"-ERR unsupported method"),
])
def test_sasl_errors(lines: bytes, reply: bytes) -> None:
    out, _ = dialogue(lines + b"QUIT\r\n")
    assert out.split(b"\r\n")[-3] == reply


def test_sasl_failure_names_the_user_looked_up() -> None:
    _, srv = dialogue(b"AUTH PLAIN AGJlbnV0emVyQHplaXRmb3JtLmRlAHdyb25n\r\nQUIT\r\n")
    assert [e for e in srv.events if isinstance(e, LoginFailed)] == [
        LoginFailed(user=SEED_USER, reason="bad credentials")]


def test_scram_through_the_engine() -> None:
    """A SCRAM-SHA-256 client (RFC 5802) against the engine, the server-final as a challenge."""
    conn = POP3Connection(config())
    srv = Server()
    conn.data_to_send()
    conn.receive_data(b"AUTH SCRAM-SHA-256 " + base64.b64encode(f"n,,n={SEED_USER},r=abc".encode()) + b"\r\n")
    event = conn.next_event()
    assert isinstance(event, AuthLookup)
    creds = sasl.scram_credentials(SEED_PASSWORD, salt=b"s" * 16)
    conn.auth_resolve(creds)
    server_first = base64.b64decode(conn.data_to_send()[2:])
    nonce = dict(a.split("=", 1) for a in server_first.decode().split(","))["r"]
    without_proof = f"c=biws,r={nonce}"
    auth_message = f"n={SEED_USER},r=abc,{server_first.decode()},{without_proof}".encode()
    salted = hashlib.pbkdf2_hmac("sha256", SEED_PASSWORD.encode(), b"s" * 16, 4096)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
    conn.receive_data(base64.b64encode(f"{without_proof},p={proof}".encode()) + b"\r\n")
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send().startswith(b"+ ")  # v=ServerSignature
    conn.receive_data(b"\r\nQUIT\r\n")
    out = srv.run(conn, b"")
    assert out.startswith(WELCOME)


def test_seed_cram_md5() -> None:
    """The seed's CRAM-MD5 exchange (RFC 2195), its challenge put in place of the random one."""
    conn = POP3Connection(config(tls_active=False))
    conn.data_to_send()
    conn.receive_data(b"AUTH CRAM-MD5\r\n")
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send().startswith(b"+ ")
    conn._mech.challenge = base64.b64decode(  # noqa: SLF001
        "PDQwMzYuMTA3NjMyNDM4MUBndWlsZGVuc3Rlcm4uemVpdGZvcm0uZGU+")
    conn.receive_data(b"YmVudXR6ZXJAemVpdGZvcm0uZGUgMmQ5MzczZGZkOTFlMmU2NjMxYzhlMWFkNjk4MzRmYWQ=\r\nQUIT\r\n")
    out = Server().run(conn, b"")
    assert out.startswith(WELCOME)


def test_odd_verified_names_are_not_echoed() -> None:
    """A directory may accept a SASL name no USER line could carry; the reply stays one line."""
    for name in ("evil\r\n+OK injected", "x" * 200):
        login = b"AUTH PLAIN " + base64.b64encode(f"\0{name}\0pw".encode()) + b"\r\nQUIT\r\n"
        out, _ = dialogue(login, users={name: "pw"}, maildrops={})
        assert out.split(b"\r\n")[1] == b"+OK your maildrop has 0 messages (0 octets)"


def test_auth_without_argument_lists_usable_mechanisms() -> None:
    out, _ = dialogue(b"AUTH\r\nQUIT\r\n", config(tls_active=False))
    assert b"+OK SASL mechanisms follow\r\nCRAM-MD5\r\nSCRAM-SHA-256\r\n.\r\n" in out
    out, _ = dialogue(b"AUTH PLAIN " + PLAIN_SEED + b"\r\nQUIT\r\n", config(tls_active=False))
    assert b"-ERR [AUTH] Plaintext authentication disallowed without TLS (use STLS first)\r\n" in out


def test_capa_before_and_after_tls() -> None:
    out, _ = dialogue(b"CAPA\r\nQUIT\r\n", config(tls_active=False, login_delay=60))
    assert out.split(b"\r\n")[1:-2] == [
        b"+OK Capability list follows", b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING",
        b"SASL CRAM-MD5 SCRAM-SHA-256", b"STLS", b"EXPIRE NEVER", b"LOGIN-DELAY 60",
        b"IMPLEMENTATION taube", b"."]
    out, _ = dialogue(b"CAPA\r\nQUIT\r\n")
    assert b"USER\r\nSASL PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256\r\nEXPIRE" in out
    assert b"STLS" not in out


def test_stls_drops_pipelined_plaintext_and_resets() -> None:
    conn = POP3Connection(config(tls_active=False))
    conn.data_to_send()
    conn.receive_data(b"USER u\r\n")
    assert conn.next_event() is NEED_DATA  # USER refused before TLS
    conn.receive_data(b"STLS\r\n" + LOGIN + b"STAT\r\n")
    assert isinstance(conn.next_event(), StartTLS)
    conn.accept()
    assert conn.data_to_send().endswith(b"+OK Begin TLS negotiation\r\n")
    assert conn.state is State.TLS_HANDSHAKE
    assert conn.next_event() is NEED_DATA  # none of the injected commands is parsed
    conn.tls_started()
    assert conn.tls_active and conn.state is State.AUTHORIZATION
    conn.receive_data(b"PASS x\r\nSTLS\r\n")
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b"-ERR USER first\r\n-ERR TLS is already active\r\n"


def test_stls_refused_or_not_offered() -> None:
    out, _ = dialogue(b"STLS\r\nQUIT\r\n", config(tls_active=False, tls_available=False))
    assert b"-ERR STLS is not offered here\r\n" in out
    conn = POP3Connection(config(tls_active=False))
    conn.receive_data(b"STLS\r\n")
    conn.next_event()
    conn.reject()
    assert conn.data_to_send().endswith(b"-ERR [SYS/TEMP] TLS is not available now\r\n")


# --- UPDATE and closing --------------------------------------------------------------------
def test_quit_deletes_only_marked_messages() -> None:
    out, srv = dialogue(LOGIN + b"DELE 1\r\nQUIT\r\n")
    assert srv.removed == ["uid-1"]
    assert [e for e in srv.events if isinstance(e, Update)] == [Update(deleted_uids=("uid-1",))]
    assert srv.events[-1] == Closed(reason="quit")


def test_removal_failure_is_sys_temp() -> None:
    out, srv = dialogue(LOGIN + b"DELE 1\r\nQUIT\r\nSTAT\r\n", removal_fails=True)
    assert out.endswith(b"-ERR [SYS/TEMP] Some deleted messages not removed\r\n")
    assert isinstance(srv.events[-1], Closed)


def test_quit_in_authorization_deletes_nothing() -> None:
    out, srv = dialogue(b"QUIT\r\nSTAT\r\n")
    assert out == GREETING + b"+OK pop.test POP3 server signing off\r\n"
    assert srv.events == [Closed(reason="quit")]


@pytest.mark.parametrize("tail", [b"", b"QUI", b"DELE 2\r\n"])
def test_dropped_connection_deletes_nothing(tail: bytes) -> None:
    out, srv = dialogue(LOGIN + b"DELE 1\r\n" + tail)
    assert not any(isinstance(e, Update) for e in srv.events)
    assert srv.events[-1] == Closed(reason="peer closed the connection")
    assert srv.removed == []


def test_too_many_errors_close_without_update() -> None:
    out, srv = dialogue(LOGIN + b"DELE 1\r\n" + b"BOGUS\r\n" * 20, config(max_errors=3))
    assert out.endswith(b"-ERR unknown command\r\n-ERR too many errors\r\n")
    assert out.count(b"-ERR unknown command") == 3
    assert srv.events[-1] == Closed(reason="too many errors") and srv.removed == []


def test_close_with_never_updates() -> None:
    conn = POP3Connection(config())
    conn.receive_data(LOGIN + b"DELE 1\r\n")
    srv = Server()
    conn.next_event()
    conn.accept()
    srv.answer(conn, conn.next_event())  # MailboxOpen
    assert conn.next_event() is NEED_DATA
    conn.close_with("autologout timer expired")
    assert conn.data_to_send().endswith(b"+OK message 1 deleted\r\n-ERR autologout timer expired\r\n")
    assert conn.next_event() == Closed(reason="autologout timer expired")


def test_close_with_while_sending_content_sends_no_reply() -> None:
    conn = POP3Connection(config())
    conn.receive_data(LOGIN + b"RETR 1\r\n")
    srv = Server()
    conn.next_event()
    conn.accept()
    srv.answer(conn, conn.next_event())
    assert isinstance(conn.next_event(), Retrieve)
    conn.accept()
    conn.send_content(b"Subject: x\r\n")
    conn.close_with("shutting down")
    assert conn.data_to_send().endswith(b"octets\r\nSubject: x\r\n")  # the session drops the link
    assert conn.next_event() == Closed(reason="shutting down")


# --- limits and content --------------------------------------------------------------------
def test_line_limits() -> None:
    out, _ = dialogue(b"NOOP " + b"x" * 248 + b"\r\nNOOP " + b"x" * 249 + b"\r\nQUIT\r\n", maildrops={})
    out_lines = out.split(b"\r\n")
    assert out_lines[1] == b"-ERR log in first"  # 255 octets: a command
    assert out_lines[2] == b"-ERR line too long"  # 256 octets
    out, _ = dialogue(b"Y" * 8000 + b"\r\nQUIT\r\n")
    assert out.split(b"\r\n")[1:3] == [b"-ERR line too long", b"+OK pop.test POP3 server signing off"]
    out, _ = dialogue(b"Y" * 100_000 + b"\r\nQUIT\r\n")  # beyond the hard cap: closed at once
    assert out.split(b"\r\n")[1:] == [b"-ERR line too long", b""]
    long_plain = b"AUTH PLAIN " + PLAIN_SEED + b"=" * 0 + b" " * 300 + b"\r\nQUIT\r\n"
    out, _ = dialogue(long_plain)
    assert out.split(b"\r\n")[1] == WELCOME.rstrip()  # AUTH lines may be long (RFC 5034)


def test_bad_characters() -> None:
    out, _ = dialogue(b"US\x00ER a\r\n\xff\xfe\r\nQUIT\r\n")
    assert out.split(b"\r\n")[1:3] == [b"-ERR bad characters in command"] * 2


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64])
@pytest.mark.parametrize(("body", "wire"), [
    (b".\r\n.foo\r\n", b"..\r\n..foo\r\n"),
    (b"a\r\n.", b"a\r\n..\r\n"),
    (b"no final newline", b"no final newline\r\n"),
    (b"ends in CR\r", b"ends in CR\r\n"),
    (b"bare LF\n.x\n", b"bare LF\n..x\n\r\n"),
    (b"", b""),
])
def test_retr_byte_stuffing_across_chunks(chunk: int, body: bytes, wire: bytes) -> None:
    out, _ = dialogue(LOGIN + b"RETR 1\r\nTOP 1 5\r\nQUIT\r\n", chunk=chunk, maildrops={SEED_USER: [("u", body)]})
    assert f"+OK {len(body)} octets\r\n".encode() + wire + b".\r\n+OK top of message follows\r\n" + wire + b".\r\n" in out


def test_top_stops_wanting_content() -> None:
    conn = POP3Connection(config())
    conn.receive_data(LOGIN + b"TOP 1 1\r\n")
    srv = Server()
    conn.next_event()
    conn.accept()
    srv.answer(conn, conn.next_event())
    event = conn.next_event()
    assert event == Retrieve(number=1, uid="uid-1", lines=1)
    conn.accept()
    conn.send_content(b"H: v\r\n\r\nline 1\r\n")
    assert not conn.wants_content
    conn.send_content(b"line 2\r\n")
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    conn.end_content()
    assert conn.data_to_send().endswith(b"+OK top of message follows\r\nH: v\r\n\r\nline 1\r\n.\r\n")


def test_api_misuse_raises() -> None:
    conn = POP3Connection(config())
    with pytest.raises(LocalProtocolError):
        conn.accept()
    with pytest.raises(LocalProtocolError):
        conn.send_content(b"x")
    with pytest.raises(LocalProtocolError):
        conn.tls_started()
    with pytest.raises(LocalProtocolError):
        POP3Connection(config(timestamp="no brackets"))
    conn.receive_data(LOGIN)
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.next_event()  # Login not answered
    with pytest.raises(LocalProtocolError):
        conn.reject("two\r\nlines")
    conn.accept()
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.accept_mailbox([(1, "dup"), (2, "dup")])
    with pytest.raises(LocalProtocolError):
        conn.accept_mailbox([(1, "with space")])


# --- property: arbitrary input never raises, output stays well-formed ----------------------
_CONTENT_LINES = {line for body in (MSG1, MSG2) for line in body.replace(b"\r\n.", b"\r\n..").split(b"\r\n")}
_WELL_FORMED = re.compile(
    rb"(\+OK|-ERR)( [\x20-\x7e]*)?"  # status lines
    rb"|\+ [A-Za-z0-9+/=]*"  # SASL challenges
    rb"|\."  # end of a multi-line response
    rb"|\d+ \d+|\d+ [\x21-\x7e]{1,70}"  # LIST and UIDL lines
    rb"|[A-Z][A-Z0-9-]*( [\x21-\x7e ]+)?")  # CAPA lines and mechanism names
_COMMANDS = [b"USER " + SEED_USER.encode(), b"PASS " + SEED_PASSWORD.encode(), b"STAT", b"LIST", b"LIST 1",
             b"RETR 1", b"RETR 2", b"TOP 2 1", b"DELE 1", b"RSET", b"UIDL", b"NOOP", b"CAPA", b"AUTH",
             b"AUTH PLAIN", PLAIN_SEED, b"AUTH LOGIN", b"*", b"STLS", b"QUIT", b"APOP a " + b"0" * 32]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_COMMANDS).map(lambda c: c + b"\r\n"), st.binary(max_size=40)),
                max_size=25),
       st.booleans())
def test_random_input_never_raises_and_output_is_well_formed(parts: list[bytes], tls: bool) -> None:
    srv = Server(chunk=5)
    out = srv.run(POP3Connection(config(tls_active=tls)), b"".join(parts))
    assert out.endswith(b"\r\n")
    for line in out[:-2].split(b"\r\n"):
        assert len(line) <= 510  # RFC 2449 section 4: responses are at most 512 octets
        assert _WELL_FORMED.fullmatch(line) or line in _CONTENT_LINES, line
    assert isinstance(srv.events[-1], Closed)
    assert srv.removed == [] or any(isinstance(e, Update) for e in srv.events)
