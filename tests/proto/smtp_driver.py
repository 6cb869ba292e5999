"""The session side of the SMTP property tests (``test_fuzz_smtp.py``): the check that output is
nothing but well-formed replies, the answers a session may give to each decision, and the
:class:`Driver` that plays the session, as ``net/smtp_session.py`` does."""

from __future__ import annotations

import re
from dataclasses import dataclass

from taube.proto import replies as R
from taube.proto.dotstuff import MAX_TEXT_LINE
from taube.proto.replies import Reply
from taube.proto.smtp import (
    AUTH_LINE_MAX,
    AuthLookup,
    AuthStart,
    Closed,
    Connect,
    DataAborted,
    DataChunk,
    DataStart,
    Decision,
    EndOfData,
    Etrn,
    Event,
    Expn,
    Hello,
    MailFrom,
    RcptTo,
    SMTPConfig,
    SMTPConnection,
    StartTLS,
    Vrfy,
)
from tests.proto.fuzzing import EngineDriver, Policy, printable_text

HOST = "mx.test"

# What the engine may hold between reads: its line buffer (at most AUTH_LINE_MAX, the longest line
# it accepts), the SASL exchange's state (a few values of at most an AUTH line each), the open
# transaction's MAIL (one parameter line) and small change. It must not grow with the input.
HELD_MAX = 4 * AUTH_LINE_MAX + 16384
# Replies per octet of input: the longest reply to the shortest line (EHLO's list to "EHLO x\n",
# a 500 to a lone "\n") stays well below this; the slack covers a line completed by this read.
AMPLIFICATION = 64
SLACK = 4096


def config(*, strict: bool = False, **kw: object) -> SMTPConfig:
    return SMTPConfig(hostname=HOST, strict_pipelining=strict, **kw)  # type: ignore[arg-type]


# --- the replies ---------------------------------------------------------------------------------
REPLY_LINE = re.compile(rb"([2-5][0-5][0-9])([ -])(.*)", re.S)
ENHANCED = re.compile(r"([245])\.[0-9]{1,3}\.[0-9]{1,3}(?: |$)")


def replies(out: bytes) -> list[tuple[int, list[str]]]:
    """``out`` as (code, text lines) per reply, checking that it is nothing but well-formed
    replies (RFC 5321 4.2): ``ddd-text`` continuation lines then ``ddd text``, the same code
    throughout, CRLF after each line, at most 512 octets a line, printable UTF-8 text, and an
    enhanced status code (RFC 3463) of the same class as the reply code."""
    assert not out or out.endswith(b"\r\n"), f"output does not end with CRLF: {out[-60:]!r}"
    result: list[tuple[int, list[str]]] = []
    code: int | None = None
    lines: list[str] = []
    for raw in out[:-2].split(b"\r\n") if out else []:
        m = REPLY_LINE.fullmatch(raw)
        assert m, f"not a reply line: {raw!r}"
        assert b"\r" not in raw and b"\n" not in raw, f"bare CR/LF in a reply: {raw!r}"
        assert len(raw) + 2 <= 512, f"reply line of {len(raw) + 2} octets (RFC 5321 4.5.3.1.5)"
        text = printable_text(m.group(3), raw, "reply")
        this = int(m.group(1))
        assert code is None or this == code, f"multi-line reply changes its code: {raw!r}"
        enhanced = ENHANCED.match(text)
        assert enhanced is None or enhanced.group(1) == str(this)[0], f"enhanced code of another class: {raw!r}"
        code = this
        lines.append(text)
        if m.group(2) == b" ":
            result.append((this, lines))
            code, lines = None, []
    assert code is None, "unfinished multi-line reply"
    return result


# --- the session side -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Accept:
    reply: Reply | None = None


@dataclass(frozen=True)
class Reject:
    reply: Reply


@dataclass(frozen=True)
class CloseWith:
    reply: Reply


QUEUED = Reply(code=250, enhanced="2.0.0", text="Ok: queued as 4ABCDEF")
# For each decision: the yes first, then what net/smtp_session.py (or a policy check) may say.
ANSWERS: dict[type[Decision], list[Accept | Reject | CloseWith]] = {
    Connect: [Accept(), Reject(Reply(code=554, enhanced="5.7.1", text="Service unavailable; client host blocked")),
              Reject(R.closing(HOST, "4.3.0", "Error: internal error"))],
    Hello: [Accept(), Reject(Reply(code=550, enhanced="5.7.1", text="<c>: Helo command rejected: Host not found"))],
    MailFrom: [Accept(), Reject(Reply(code=553, enhanced="5.7.1", text="<a@x>: Sender address rejected: not owned by user")),
               Reject(R.TRANSIENT_FAILURE), Reject(R.STORAGE_FULL)],
    RcptTo: [Accept(), Reject(Reply(code=550, enhanced="5.1.1", text="<b@y>: Recipient address rejected: User unknown")),
             Reject(Reply(code=554, enhanced="5.7.1", text="<b@y>: Relay access denied")), Reject(R.TRANSIENT_FAILURE)],
    DataStart: [Accept(), Reject(R.TRANSIENT_FAILURE), Reject(R.STORAGE_FULL)],
    EndOfData: [Accept(QUEUED), Reject(R.STORAGE_FULL), Reject(R.TRANSIENT_FAILURE),
                Reject(Reply(code=554, enhanced="5.7.1", text="Error: message content rejected"))],
    Vrfy: [Accept(R.VRFY_AMBIGUOUS), Accept(Reply(code=250, enhanced="2.0.0", text="<alice@example.test>")),
           Reject(Reply(code=550, enhanced="5.1.1", text="<x>: User unknown")), Reject(R.VRFY_DISABLED)],
    Expn: [Reject(R.EXPN_DISABLED), Accept(Reply(code=250, enhanced="2.1.5", text=("<alice@example.test>", "<bob@example.org>"))),
           Reject(Reply(code=550, enhanced="5.1.1", text="<l>: No such mailing list"))],
    Etrn: [Accept(), Accept(R.etrn_nothing_waiting("example.test")), Accept(R.etrn_pending("example.test", 3)),
           Reject(R.etrn_unable("example.test")), Reject(R.etrn_not_allowed("example.test", "not trusted"))],
    StartTLS: [Accept(), Reject(Reply(code=454, enhanced="4.7.0", text="TLS not available due to temporary reason"))],
    AuthStart: [Accept(), CloseWith(R.closing(HOST, "4.7.0", "Error: too many authentication failures"))],
}


class Driver(EngineDriver):
    """Plays the session: answers every decision, runs to NEED_DATA or Closed after each read,
    takes the output as the session does; optionally checks the memory bounds after each read.
    ``events`` holds every event but DataChunk, and ``("message", content)`` after EndOfData."""

    closed_type = Closed
    tls_verb = "STARTTLS"

    def __init__(self, cfg: SMTPConfig, policy: Policy, *, check_memory: bool = False) -> None:
        super().__init__(SMTPConnection(cfg), held_max=HELD_MAX, line_max=AUTH_LINE_MAX, check_memory=check_memory)
        self.policy = policy
        self.content = bytearray()  # the DataChunks of the message under way
        if cfg.connect_decision:  # the connect-stage checks say whether to greet at all
            event = self.conn.next_event()
            assert isinstance(event, Connect), event
            self.handle(event)
        greeting = self.conn.data_to_send()  # taken before any input, as the session does
        got = [code for code, _ in replies(greeting)]
        if got != [220]:
            assert len(got) == 1 and got[0] >= 400, greeting
            assert isinstance(self.conn.next_event(), Closed), "refused at connect but still open"
            self.closed = True

    def feed(self, data: bytes) -> bytes:
        """One read, as :meth:`EngineDriver.feed`; the replies stay proportionate to the input."""
        produced = super().feed(data)
        if self.check_memory:
            assert len(produced) <= AMPLIFICATION * len(data) + SLACK, f"{len(produced)} octets for {len(data)}"
        return produced

    def timeout(self) -> None:
        """The session's command timeout: 421 and close."""
        if not self.closed:
            self.conn.close_with(R.closing(HOST, "4.4.2", "Error: timeout exceeded"))
            self.out += self.conn.data_to_send()
            assert isinstance(self.conn.next_event(), Closed)
            self.closed = True

    def handle(self, event: Event) -> None:
        if isinstance(event, DataChunk):
            self.content += event.data
            return
        self.events.append(event)
        if isinstance(event, (DataStart, DataAborted)):
            self.content.clear()
        elif isinstance(event, EndOfData):
            self.events.append(("message", bytes(self.content)))
            self.content.clear()
        if not isinstance(event, Decision):
            return  # AuthDone, DataAborted, Reset: information only
        conn = self.conn
        if isinstance(event, AuthLookup):
            conn.auth_resolve(self.policy.lookup(event.request))
            return
        options = ANSWERS.get(type(event), [Accept()])  # a decision this driver does not know: yes
        match self.policy.pick(options):
            case Accept(reply=reply):
                conn.accept(reply)
                if isinstance(event, StartTLS):  # flush the 220, handshake, then a fresh session
                    self.out += conn.data_to_send()
                    conn.tls_started()
            case Reject(reply=reply):
                conn.reject(reply)
            case CloseWith(reply=reply):
                conn.close_with(reply)

    def check_held(self, just_read: int) -> None:
        super().check_held(just_read)
        decoder = getattr(self.conn, "_decoder", None)
        pending = getattr(decoder, "_pending", b"")
        assert len(pending) <= MAX_TEXT_LINE, f"DATA decoder carries {len(pending)} octets"

    def difference(self, expected: EngineDriver) -> str:
        """The replies that differ."""
        a, b = replies(bytes(self.out)), replies(bytes(expected.out))
        i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        return f"reply {i} differs: {a[i:i + 2]} instead of {b[i:i + 2]}"
