"""Property tests for the POP3 engine, driven as ``net/pop3_session.py`` drives it.

1. Random bytes, each line cut into random reads: the engine raises nothing and every line gets
   exactly one well-formed response (``+OK``/``-ERR``, a ``+ `` SASL continuation where an
   exchange is under way, multi-line bodies ending in ``.`` CRLF after CAPA, LIST, UIDL, RETR,
   TOP and AUTH), plus at most one closing ``-ERR`` on the line that ends the session; after
   ``Closed`` nothing more comes out.
2. Memory stays bounded after every read, also for megabytes without a line end.
3. A valid session (USER/PASS, APOP or SASL; STAT, LIST, UIDL, RETR, TOP, DELE, RSET, NOOP, CAPA,
   QUIT) gives the same bytes pipelined in one piece, byte by byte and cut at random points.
4. Random command sequences (valid and invalid verbs in random states) get one response each,
   and the same responses sent all at once as line by line.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from taube.proto import sasl
from taube.proto.pop3 import (
    AUTH_LINE_MAX,
    ApopLogin,
    AuthLookup,
    Closed,
    Decision,
    Event,
    Login,
    MailboxOpen,
    POP3Config,
    POP3Connection,
    Retrieve,
    StartTLS,
    State,
    Update,
)
from tests.proto.fuzzing import (
    SECRET,
    EngineDriver,
    Policy,
    answers,
    assert_same,
    bytewise,
    command_lines,
    cuts,
    examples,
    fixed_sasl_randomness,
    fuzz_input,
    lines_of,
    lookalike_spellings,
    printable_text,
    split,
    verb_of,
)

HOST = "pop.test"
TIMESTAMP = "<1896.697170952@pop.test>"
USER = "alice@example.test"
# As for SMTP: the line buffer (AUTH_LINE_MAX), SASL state, small change; plus the listing the
# session handed over (at most 70 octets of UID per message) and one chunk of content in flight.
HELD_MAX = 4 * AUTH_LINE_MAX + 16384
PER_MESSAGE = 128


def config(**kw: object) -> POP3Config:
    return POP3Config(hostname=HOST, timestamp=TIMESTAMP, **kw)  # type: ignore[arg-type]


# --- the responses ---------------------------------------------------------------------------------
STATUS = re.compile(rb"(\+OK|-ERR)(?: (.*))?|\+ ([A-Za-z0-9+/]*={0,2})", re.S)


@dataclass(frozen=True)
class Response:
    status: bytes  # b"+OK", b"-ERR" or b"+" (a SASL continuation)
    line: bytes
    body: bytes | None  # the multi-line body, still dot-stuffed; None for a single line


def responses(out: bytes, *, multiline: bool, continuation: bool) -> list[Response]:
    """``out`` as responses, checking that it is nothing else (RFC 1939 section 3, RFC 2449
    section 4): status lines of at most 512 octets with printable text; the first ``+OK`` is
    followed by a body ending in ``.`` CRLF when ``multiline``; ``+ `` lines only where a SASL
    exchange may continue. In a body, every line (split at CRLF or at a bare LF alike) that starts
    with a dot has a second one: no client can see an early end."""
    result: list[Response] = []
    pos = 0
    while pos < len(out):
        end = out.find(b"\r\n", pos)
        assert end >= 0, f"response without CRLF: {out[pos:pos + 80]!r}"
        line, pos = out[pos:end], end + 2
        m = STATUS.fullmatch(line)
        assert m, f"not a response: {line!r}"
        assert len(line) + 2 <= 512, f"response of {len(line) + 2} octets (RFC 2449 section 4)"
        assert b"\r" not in line and b"\n" not in line, f"bare CR/LF in a response: {line!r}"
        if m.group(3) is not None:
            assert continuation, f"a SASL continuation where none may come: {line!r}"
        elif m.group(2) is not None:
            printable_text(m.group(2), line, "response")
        body = None
        if multiline and not result and m.group(1) == b"+OK":
            if out.startswith(b".\r\n", pos):
                body, pos = b"", pos + 3
            else:
                t = out.find(b"\r\n.\r\n", pos)
                assert t >= 0, f"multi-line response without its end: {out[pos:pos + 80]!r}..."
                body, pos = out[pos:t + 2], t + 5
            for i in [0, *(j + 1 for j in range(len(body)) if body[j] == 0x0A)]:
                if body[i:i + 1] == b".":
                    assert body[i + 1:i + 2] == b".", f"unstuffed dot in a body: {body[max(0, i - 20):i + 20]!r}"
        result.append(Response(m.group(1) or b"+", line, body))
    return result


def command_words(line: bytes) -> tuple[str, str] | None:
    """The verb (upper case, ASCII only) and argument the engine will see in ``line``; None if
    not UTF-8."""
    verb = verb_of(line)
    if verb is None:
        return None
    return verb, line.rstrip(b"\r\n").decode("utf-8").partition(" ")[2].strip(" ")


def expectation(line: bytes, state: State) -> tuple[bool, bool]:
    """(a +OK to this line is multi-line, a SASL continuation may answer it)."""
    if state is State.AUTH:
        return False, True  # a SASL response, not a command
    words = command_words(line)
    if words is None:
        return False, False
    verb, arg = words
    if verb in ("CAPA", "RETR", "TOP"):
        return True, False
    if verb in ("LIST", "UIDL"):
        return not arg, False
    if verb == "AUTH":
        return not arg, True  # RFC 1734 style AUTH alone lists the mechanisms
    return False, False


def unstuff(body: bytes) -> bytes:
    out = body.replace(b"\n..", b"\n.")
    return out[1:] if out.startswith(b"..") else out


# --- the session side ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Message:
    uid: str
    content: bytes


class Driver(EngineDriver):
    """Plays the session: the directory, one maildrop, content streamed in ``chunk``-octet
    pieces (flushed after each, as the session does); optionally checks the memory bounds."""

    closed_type = Closed
    tls_verb = "STLS"

    def __init__(self, cfg: POP3Config, policy: Policy, mailbox: Sequence[Message], chunk: int = 4096,
                 *, check_memory: bool = False) -> None:
        held_max = HELD_MAX + PER_MESSAGE * len(mailbox) + 3 * chunk
        super().__init__(POP3Connection(cfg), held_max=held_max, line_max=AUTH_LINE_MAX, check_memory=check_memory)
        self.policy = policy
        self.mailbox = list(mailbox)
        self.chunk = chunk
        greeting = self.conn.data_to_send()
        assert [r.status for r in responses(greeting, multiline=False, continuation=False)] == [b"+OK"]
        assert TIMESTAMP.encode() in greeting
        self.retrieved: list[tuple[Retrieve, bytes]] = []  # what each accepted RETR/TOP sent

    def handle(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, Decision):
            self.answer(event)

    def answer(self, event: Decision) -> None:
        conn, pick = self.conn, self.policy.pick
        match event:
            case Login() | ApopLogin():
                reason = pick([None, "", "[AUTH] too many failed logins, try again later"])
                conn.accept() if reason is None else conn.reject(reason or None)
            case AuthLookup(request=request):
                conn.auth_resolve(self.policy.lookup(request))
            case MailboxOpen():
                refusal = pick([None, "[IN-USE] mailbox locked by another POP3 session",
                                "[SYS/TEMP] cannot open the mailbox, try again later"])
                if refusal is None:
                    conn.accept_mailbox([(len(m.content), m.uid) for m in self.mailbox])
                else:
                    conn.reject(refusal)
            case StartTLS():
                if pick([True, False]):
                    conn.accept()
                    self.out += conn.data_to_send()  # the +OK goes out before the handshake
                    conn.tls_started()
                else:
                    conn.reject()
            case Retrieve():
                if pick([True, False]):
                    self.stream(event)
                else:
                    conn.reject("[SYS/TEMP] cannot read the message")
            case Update():
                conn.accept() if pick([True, False]) else conn.reject()
            case _:
                conn.accept()  # a decision this driver does not know: yes

    def stream(self, event: Retrieve) -> None:
        conn = self.conn
        content = self.mailbox[event.number - 1].content
        conn.accept()
        start = len(self.out)
        for i in range(0, len(content), self.chunk):
            conn.send_content(content[i:i + self.chunk])
            self.out += conn.data_to_send()  # the session flushes after every chunk
            if self.check_memory:
                self.check_held(0)
            if not conn.wants_content:
                break
        conn.end_content()
        self.out += conn.data_to_send()
        self.retrieved.append((event, bytes(self.out[start:])))

    def difference(self, expected: EngineDriver) -> str:
        """The output from the start of the line where it first differs."""
        i = next((i for i, (x, y) in enumerate(zip(self.out, expected.out)) if x != y),
                 min(len(self.out), len(expected.out)))
        start = max(0, bytes(expected.out).rfind(b"\r\n", 0, i) + 2)
        return (f"output differs at octet {i}: {bytes(self.out[start:i + 60])!r} "
                f"instead of {bytes(expected.out[start:i + 60])!r}")


# --- strategies ---------------------------------------------------------------------------------------
@st.composite
def configs(draw: st.DrawFn) -> POP3Config:
    tls = draw(st.sampled_from(["none", "available", "active"]))
    return config(
        tls_available=tls == "available",
        tls_active=tls == "active",
        sasl_mechanisms=draw(st.sampled_from([sasl.MECHANISMS, ("PLAIN",), ()])),
        plaintext_requires_tls=draw(st.integers(0, 3)) == 3,  # mostly off: logins get through
        user_command=draw(st.integers(0, 7)) < 7,
        apop=draw(st.booleans()),
        max_errors=draw(st.sampled_from([1000, 1000, 10, 3])),
    )


CONTENT_LINES = [b"Subject: hi", b"", b".", b"..", b".leading", b"line", b"a" * 300, b"\xc3\xa9t\xc3\xa9",
                 b"From: a@example.test", b". ", b"\t."]
LINE_ENDS = [b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b""]
contents = st.lists(st.tuples(st.one_of(st.sampled_from(CONTENT_LINES), st.binary(max_size=20)),
                              st.sampled_from(LINE_ENDS)), max_size=12).map(lambda ls: b"".join(a + b for a, b in ls))


@st.composite
def mailboxes(draw: st.DrawFn, min_size: int = 0) -> list[Message]:
    messages = draw(st.lists(contents, min_size=min_size, max_size=5))
    return [Message(f"uid-{i}.{len(c)}", c) for i, c in enumerate(messages, 1)]


PLAIN_IR = base64.b64encode(f"\0{USER}\0{SECRET}".encode())
APOP_DIGEST = hashlib.md5((TIMESTAMP + SECRET).encode()).hexdigest()
TOKENS = [
    b"\r\n", b"\n", b"\r", b"\x00", b" ", b".", b"\xff", b"\xc3\xa9", b"\xe2\x80\xa8",
    f"USER {USER}\r\n".encode(), f"PASS {SECRET}\r\n".encode(), f"APOP {USER} {APOP_DIGEST}\r\n".encode(),
    b"AUTH\r\n", b"AUTH PLAIN " + PLAIN_IR + b"\r\n", b"AUTH PLAIN\r\n", PLAIN_IR + b"\r\n", b"AUTH LOGIN\r\n",
    b"AUTH CRAM-MD5\r\n", b"AUTH SCRAM-SHA-256\r\n", b"*\r\n", b"=\r\n", b"STLS\r\n", b"CAPA\r\n", b"STAT\r\n",
    b"LIST\r\n", b"LIST 1\r\n", b"UIDL\r\n", b"UIDL 2\r\n", b"RETR 1\r\n", b"TOP 1 0\r\n", b"TOP 2 3\r\n",
    b"DELE 1\r\n", b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n", b"quit\r\n", b"LIST 99999999999999999999\r\n",
    b"RETR -1\r\n", b"TOP 1 99999999999999999999\r\n", b"EHLO x\r\n", b"GET / HTTP/1.1\r\n",
]
RUNS = [b"A", b".", b"\r", b" ", b"\x00"]  # long runs without a line end
LINE_RUNS = [b"LIST\r\n", b"\n", b"NOOP\r\n"]  # many lines
fuzz_bytes = fuzz_input(TOKENS, RUNS, LINE_RUNS, binary_max=1000, run_max=20000, token_weight=2)
LOGIN = f"USER {USER}\r\nPASS {SECRET}\r\n".encode()
# Where the random input starts (the first is what hypothesis prefers): logged in, nowhere, in a
# SASL exchange.
prefixes = st.sampled_from([LOGIN, b"", b"AUTH PLAIN " + PLAIN_IR + b"\r\n", b"AUTH LOGIN\r\n", f"USER {USER}\r\n".encode()])


def play_lines(cfg: POP3Config, mailbox: list[Message], data: bytes, numbers: list[int], at: list[int],
               *, chunk: int = 4096, check_memory: bool = False) -> Driver:
    """Each line of ``data`` sent after the responses to the previous one, itself cut into reads
    at ``at``; every line must get exactly one well-formed response."""
    driver = Driver(cfg, Policy(numbers), mailbox, chunk, check_memory=check_memory)
    for line in lines_of(data):
        if driver.closed:
            driver.feed(line)  # asserts that nothing comes out
            continue
        multiline, continuation = expectation(line, driver.conn.state)
        pieces = split(line, at)
        out = b""
        for i, piece in enumerate(pieces):
            got = driver.feed(piece)
            assert not got or i == len(pieces) - 1 or driver.closed, f"a response before the line ended: {got!r}"
            out += got
        got = responses(out, multiline=multiline, continuation=continuation)
        if not line.endswith(b"\n"):
            assert not got or driver.closed, f"a response to an unfinished line: {got}"
        elif driver.closed:
            assert 1 <= len(got) <= 2, f"{len(got)} responses to {line[:60]!r}, the last before closing"
        else:
            assert len(got) == 1, f"{len(got)} responses to {line[:60]!r}"
    driver.feed(b"")
    assert driver.closed, "the peer closed but the engine did not"
    for event, sent in driver.retrieved:
        body = responses(sent, multiline=True, continuation=False)[0].body
        assert body is not None
        content = mailbox[event.number - 1].content
        if event.lines is None:  # RETR: the whole message, with a line end added if it had none
            assert unstuff(body).startswith(content) and len(unstuff(body)) - len(content) <= 2
    return driver


def play_stream(cfg: POP3Config, mailbox: list[Message], data: bytes, numbers: list[int],
                chunking: Callable[[bytes], list[bytes]], *, chunk: int = 4096) -> Driver:
    driver = Driver(cfg, Policy(numbers), mailbox, chunk)
    driver.feed_stream(data, chunking)
    return driver


# --- 1 and 2: random bytes ----------------------------------------------------------------------------
@examples(400)
@given(cfg=configs(), mailbox=mailboxes(min_size=1), prefix=prefixes, blob=fuzz_bytes, at=cuts,
       numbers=answers, chunk=st.sampled_from([4096, 1, 7]))
def test_random_bytes_get_one_response_per_line(cfg: POP3Config, mailbox: list[Message], prefix: bytes,
                                                blob: bytes, at: list[int], numbers: list[int],
                                                chunk: int) -> None:
    with fixed_sasl_randomness():
        play_lines(cfg, mailbox, prefix + blob, numbers, at, chunk=chunk, check_memory=True)


@examples(400)
@given(cfg=configs(), mailbox=mailboxes(min_size=1), prefix=prefixes, blob=fuzz_bytes, at=cuts, numbers=answers)
def test_random_bytes_split_anywhere_same_responses(cfg: POP3Config, mailbox: list[Message], prefix: bytes,
                                                    blob: bytes, at: list[int], numbers: list[int]) -> None:
    """How the input is cut into reads changes nothing: all at once, at random points, and line
    by line (waiting for each response) give the same bytes."""
    data = prefix + blob
    with fixed_sasl_randomness():
        lines = play_lines(cfg, mailbox, data, numbers, [])
        assert_same(play_stream(cfg, mailbox, data, numbers, lambda s: [s]), lines)
        assert_same(play_stream(cfg, mailbox, data, numbers, lambda s: split(s, at)), lines)


MEGABYTES_PREFIXES = {
    "authorization": b"",
    "user-given": f"USER {USER}\r\n".encode(),
    "transaction": LOGIN,
    "auth": b"AUTH LOGIN\r\n",
}


@pytest.mark.parametrize("filler", [b"A", b"\r", b"\xff\x00"], ids=["letters", "cr", "binary"])
@pytest.mark.parametrize("state", list(MEGABYTES_PREFIXES))
def test_megabytes_without_line_end_stay_bounded(state: str, filler: bytes) -> None:
    """Property 2: 4 MiB without LF, 64 KiB a read, in every state: bounded, at most a few
    responses."""
    cfg = config(sasl_mechanisms=sasl.MECHANISMS, plaintext_requires_tls=False)
    driver = Driver(cfg, Policy([0]), [Message("uid-1", b"Subject: x\r\n\r\nhi\r\n")], check_memory=True)
    driver.feed_megabytes(MEGABYTES_PREFIXES[state], filler)
    assert driver.closed


# --- 3. valid sessions -----------------------------------------------------------------------------------
@st.composite
def pop3_sessions(draw: st.DrawFn, cfg: POP3Config, count: int) -> bytes:
    """What a correct client may send: STLS first if offered, CAPA, a login, then transaction
    commands with message numbers in (and just past) the maildrop, then QUIT."""
    out: list[bytes] = []
    if cfg.tls_available and draw(st.booleans()):
        out.append(b"STLS\r\n")
    if draw(st.booleans()):
        out.append(b"CAPA\r\n")
    how = draw(st.sampled_from(["user", "user", "apop", "plain-initial", "plain", "login", "wrong"]))
    if how == "user":
        out.append(f"USER {USER}\r\nPASS {SECRET}\r\n".encode())
    elif how == "wrong":
        out.append(f"USER {USER}\r\nPASS not the password\r\nUSER {USER}\r\nPASS {SECRET}\r\n".encode())
    elif how == "apop":
        out.append(f"APOP {USER} {APOP_DIGEST}\r\n".encode())
    elif how == "plain-initial":
        out.append(b"AUTH PLAIN " + PLAIN_IR + b"\r\n")
    elif how == "plain":
        out.append(b"AUTH PLAIN\r\n" + PLAIN_IR + b"\r\n")
    else:
        out.append(b"AUTH LOGIN\r\n" + base64.b64encode(USER.encode()) + b"\r\n"
                   + base64.b64encode(SECRET.encode()) + b"\r\n")
    numbers = st.integers(1, count + 1)
    for _ in range(draw(st.integers(0, 8))):
        command = draw(st.sampled_from(["STAT", "LIST", "LIST n", "UIDL", "UIDL n", "RETR n", "TOP n k",
                                        "DELE n", "RSET", "NOOP", "CAPA"]))
        command = command.replace("n", str(draw(numbers))).replace("k", str(draw(st.integers(0, 5))))
        out.append(command.encode() + b"\r\n")
    if draw(st.integers(0, 3)):
        out.append(draw(st.sampled_from([b"QUIT\r\n", b"quit\r\n"])))
    return b"".join(out)


@st.composite
def valid_sessions(draw: st.DrawFn) -> tuple[POP3Config, list[Message], bytes]:
    tls = draw(st.sampled_from(["none", "available", "active"]))
    cfg = config(tls_available=tls == "available", tls_active=tls == "active",
                 sasl_mechanisms=("PLAIN", "LOGIN"), plaintext_requires_tls=draw(st.booleans()),
                 apop=True, max_errors=draw(st.sampled_from([1000, 20])))
    mailbox = draw(mailboxes())
    return cfg, mailbox, draw(pop3_sessions(cfg, len(mailbox)))


@examples(400)
@given(case=valid_sessions(), numbers=answers, at=cuts, chunk=st.sampled_from([4096, 1, 5]),
       other_chunk=st.integers(1, 64))
def test_valid_session_same_responses_however_split(case: tuple[POP3Config, list[Message], bytes],
                                                    numbers: list[int], at: list[int], chunk: int,
                                                    other_chunk: int) -> None:
    """Property 3: pipelined in one piece, byte by byte, at random points and line by line:
    the same bytes, the same events. Nor does it matter in what pieces the session hands the
    message content to the engine (RETR, TOP)."""
    cfg, mailbox, data = case
    note(data.decode("utf-8", "replace"))
    whole = play_stream(cfg, mailbox, data, numbers, lambda s: [s], chunk=chunk)
    assert_same(play_stream(cfg, mailbox, data, numbers, lambda s: [s], chunk=other_chunk), whole)
    assert_same(play_stream(cfg, mailbox, data, numbers, bytewise, chunk=chunk), whole)
    assert_same(play_stream(cfg, mailbox, data, numbers, lambda s: split(s, at), chunk=chunk), whole)
    assert_same(play_lines(cfg, mailbox, data, numbers, at, chunk=chunk), whole)


# --- 4. random command sequences ---------------------------------------------------------------------
VERBS = ["USER", "PASS", "APOP", "AUTH", "STLS", "CAPA", "QUIT", "STAT", "LIST", "RETR", "TOP", "DELE", "NOOP",
         "RSET", "UIDL", "user", "list", "XTND", "LAST", "RPOP", "EHLO", "HELO", "GET", ""]
ARGS = ["", USER, SECRET, "1", "2", "0", "99", "-1", "1 0", "2 3", "1 x", "x", "1 2 3", "PLAIN", "LOGIN",
        "CRAM-MD5", "SCRAM-SHA-256", "GSSAPI", "PLAIN " + PLAIN_IR.decode(), "PLAIN !!", f"{USER} {APOP_DIGEST}",
        f"{USER} {'0' * 32}", "  spaced  ", "\u00e9", "/ HTTP/1.1"]
RAW_LINES = ["*", "=", PLAIN_IR.decode(), base64.b64encode(USER.encode()).decode(), "", " ", "\x00", ".",
             base64.b64encode(b"n,,n=alice,r=abc").decode(), "alice 0123456789abcdef0123456789abcdef"]
GOOD_LINES = [f"USER {USER}", f"PASS {SECRET}", f"APOP {USER} {APOP_DIGEST}", "AUTH PLAIN " + PLAIN_IR.decode(),
              "AUTH LOGIN", "AUTH", "STLS", "CAPA", "STAT", "LIST", "LIST 1", "UIDL", "UIDL 1", "RETR 1", "TOP 1 1",
              "DELE 1", "RSET", "NOOP", "QUIT"]
random_command_lines = command_lines(GOOD_LINES, VERBS, ARGS, RAW_LINES)


@examples(400)
@given(cfg=configs(), mailbox=mailboxes(min_size=1), prefix=prefixes, lines=random_command_lines, numbers=answers,
       at=cuts)
def test_command_sequences_one_response_each(cfg: POP3Config, mailbox: list[Message], prefix: bytes,
                                             lines: list[bytes], numbers: list[int], at: list[int]) -> None:
    """Property 4: one response per command line, waiting for each; the same all at once."""
    data = prefix + b"".join(lines)
    with fixed_sasl_randomness():
        one_by_one = play_lines(cfg, mailbox, data, numbers, at, check_memory=True)
        assert_same(play_stream(cfg, mailbox, data, numbers, lambda s: [s]), one_by_one)


# --- 4b. only ASCII verbs are commands ----------------------------------------------------------------
# As for SMTP (see fuzzing.LOOKALIKES): RFC 1939 section 3, keywords are ASCII and
# case-insensitive in ASCII; "ſTAT" or "PAß" must not be STAT or PASS.


LOOKALIKE_CASES = [
    (setup, spelled + rest)
    for setup, word, rest in [
        (b"", "USER", " " + USER), (f"USER {USER}\r\n".encode(), "PASS", " " + SECRET), (b"", "STLS", ""),
        (b"", "AUTH", " PLAIN " + PLAIN_IR.decode()), (LOGIN, "STAT", ""), (LOGIN, "LIST", ""),
        (LOGIN, "UIDL", ""), (LOGIN, "RSET", ""), (LOGIN, "QUIT", ""),
    ]
    for spelled in lookalike_spellings(word)
] + [(b"", "AUTH " + spelled + " " + PLAIN_IR.decode()) for spelled in lookalike_spellings("PLAIN")]


@pytest.mark.parametrize(("setup", "line"), LOOKALIKE_CASES,
                         ids=[c[1].encode("unicode_escape").decode() for c in LOOKALIKE_CASES])
def test_non_ascii_lookalike_verbs_are_not_commands(setup: bytes, line: str) -> None:
    """A verb (or SASL mechanism name) spelled with a character that only upper-cases to ASCII
    gets -ERR, never the command it resembles."""
    cfg = config(tls_available=True, sasl_mechanisms=("PLAIN",), plaintext_requires_tls=False)
    driver = Driver(cfg, Policy([0]), [Message("uid-1", b"Subject: x\r\n\r\nhi\r\n")])
    if setup:
        driver.feed(setup)
    raw = line.encode("utf-8") + b"\r\n"
    multiline, continuation = expectation(raw, driver.conn.state)
    got = responses(driver.feed(raw), multiline=multiline, continuation=continuation)
    assert [r.status for r in got] == [b"-ERR"], f"{line!r} was taken for a command: {got}"
    assert not driver.closed
