"""The POP3 server protocol (RFC 1939, with RFC 2449 CAPA and response codes, RFC 2595 STLS and
RFC 5034 SASL AUTH) as a sans-I/O state machine: bytes in, events out; decisions in, reply bytes
out. No sockets, no files, no clock: the APOP timestamp of the greeting is passed in.

How to drive it::

    conn = POP3Connection(POP3Config(hostname="pop.example", timestamp="<123.456@pop.example>"))
    send(conn.data_to_send())                       # the +OK greeting
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            send(conn.data_to_send())               # every reply so far, in order
            conn.receive_data(await recv())         # b"" means the peer closed
        elif isinstance(event, MailboxOpen):        # credentials verified: lock and list
            conn.accept_mailbox([(size, uid), ...]) or conn.reject("[IN-USE] ...")
        elif isinstance(event, Retrieve):           # RETR / TOP: stream the message
            conn.accept()
            for chunk in read(event.uid):
                conn.send_content(chunk)
                send(conn.data_to_send())
                if not conn.wants_content: break    # TOP has what it needs
            conn.end_content()
        elif isinstance(event, Decision):           # Login, ApopLogin, StartTLS, Update, ...
            conn.accept() or conn.reject(text)      # exactly one answer before next_event()

The rules:

* States follow RFC 1939 section 3: AUTHORIZATION, TRANSACTION, UPDATE; the table
  :data:`ALLOWED` says which command is valid where, and a command out of place gets ``-ERR``.
  Every state change happens in one place, :meth:`POP3Connection._enter`, from the table
  :data:`TRANSITIONS` (state, what happened) -> state; the state after USER, where PASS may
  follow, is :attr:`State.USER` (any next command leaves it).
* Commands run strictly in order (RFC 2449 section 6.6, PIPELINING); while a decision is pending
  or message content is being sent, no further input is parsed.
* Credentials, mailbox locking, reading and deleting stay outside: the engine emits a
  :class:`Decision` and waits for the answer. It answers itself only what needs no policy.
* Peer mistakes are ``-ERR`` replies, never exceptions; misuse of the API raises
  :class:`LocalProtocolError`. Each ``-ERR`` counts; past ``max_errors`` the engine closes.
* A command line over 255 octets (RFC 2449 section 4; AUTH lines and SASL responses over
  :data:`AUTH_LINE_MAX`) gets ``-ERR line too long``; input without a line end beyond
  :data:`HARD_LINE_MAX` gets ``-ERR line too long`` and the engine closes as soon as that much has
  arrived. Lines end at LF or CRLF: POP3 clients are not held to CRLF.
* A SASL exchange cancelled with ``*`` (RFC 5034 section 4) gets ``-ERR``, as a failed one.
* Only a QUIT in TRANSACTION state leads to UPDATE (RFC 1939 section 6): a dropped connection,
  a timeout or too many errors close without an :class:`Update`, so nothing is deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from . import sasl
from .common import NEED_DATA, Engine, LocalProtocolError, NeedData, ascii_upper
from .dotstuff import ContentEncoder
from .pop3_events import (
    ApopLogin,
    AuthLookup,
    Closed,
    Decision,
    Event,
    Login,
    LoginFailed,
    MailboxOpen,
    POP3Config,
    Retrieve,
    StartTLS,
    State,
    Update,
)
from .pop3_rules import (
    _ABANDONED,
    _AUTH_FAILED,
    _DIGEST,
    _PLAINTEXT_REFUSED,
    _REJECT_DEFAULTS,
    _TIMESTAMP,
    _USAGE,
    ALLOWED,
    _check_listing,
    _check_text,
    _classify_mechanisms,
    _count,
    _displayable,
    _Message,
    AUTH_LINE_MAX,
    COMMAND_LINE_MAX,
    HARD_LINE_MAX,
    TRANSITIONS,
)

__all__ = [
    "NEED_DATA",
    "ALLOWED",
    "AUTH_LINE_MAX",
    "COMMAND_LINE_MAX",
    "HARD_LINE_MAX",
    "TRANSITIONS",
    "ApopLogin",
    "AuthLookup",
    "Closed",
    "Decision",
    "Event",
    "LocalProtocolError",
    "Login",
    "LoginFailed",
    "MailboxOpen",
    "POP3Config",
    "POP3Connection",
    "Retrieve",
    "StartTLS",
    "State",
    "Update",
]

class POP3Connection(Engine):
    """One POP3 server connection's protocol state. See the module docstring."""

    decision_type = Decision
    closed_type = Closed
    lookup_type = AuthLookup
    transitions = TRANSITIONS  # a closed peer is never an Update: RFC 1939 section 6 needs a QUIT
    allowed = ALLOWED
    line_too_long = "line too long"
    bad_characters = "bad characters in command"
    verbatim_arguments = frozenset({"PASS"})  # RFC 1939 section 7: the password may hold spaces
    auth_failed = _AUTH_FAILED
    auth_malformed = "malformed SASL response"
    auth_abandoned = _ABANDONED

    def __init__(self, config: POP3Config) -> None:
        super().__init__(AUTH_LINE_MAX, HARD_LINE_MAX)
        if not _TIMESTAMP.fullmatch(config.timestamp):
            raise LocalProtocolError("the timestamp must look like <pid.clock@hostname>")
        self.config = config
        self.state = State.AUTHORIZATION
        self.tls_active = config.tls_active
        self.user: str | None = None  # the user whose maildrop is open
        self._user_arg: str | None = None  # the name USER gave, while in State.USER
        self._messages: list[_Message] = []
        self._mechanisms, self._plaintext_mechs = _classify_mechanisms(config)
        self._content: ContentEncoder | None = None
        self._ok(f"taube ready {config.timestamp}")

    # --- the I/O side ----------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def next_event(self) -> Event | NeedData:
        return super().next_event()  # type: ignore[no-any-return]

    def _check_ready(self) -> None:
        if self.state is State.CONTENT:
            raise LocalProtocolError("the message content has not been ended (end_content())")

    def _advance(self) -> bool:
        if self.state is State.TLS_HANDSHAKE:
            return False
        return self._next_line(self.state is State.AUTH)


    @property
    def wants_content(self) -> bool:
        """True while an accepted RETR/TOP still needs message content (TOP stops early)."""
        return self._content is not None and not self._content.complete

    # --- answers to decisions --------------------------------------------------------------
    def accept(self) -> None:
        """Say yes to the pending Login, ApopLogin, StartTLS, Retrieve or Update."""
        event = self._pending
        if isinstance(event, (MailboxOpen, AuthLookup)):
            method = "accept_mailbox" if isinstance(event, MailboxOpen) else "auth_resolve"
            raise LocalProtocolError(f"answer {type(event).__name__} with {method}()")
        event = self._take_pending()
        match event:
            case Login() | ApopLogin():
                self._verified(event.user)
            case StartTLS():
                self._ok("Begin TLS negotiation")
                self._lines.clear()  # RFC 2595 section 4 / RFC 3207 5: no pipelined plaintext
                self._enter("starttls")
            case Retrieve():
                self._retrieve_accepted(event)
            case Update():
                left = sum(not m.deleted for m in self._messages)
                status = "maildrop empty" if not left else f"{_count(left, 'message')} left"
                self._ok(f"{self.config.hostname} POP3 server signing off ({status})")
                self._stop(None, "quit")

    def reject(self, text: str | None = None) -> None:
        """Say no to the pending decision: ``-ERR text``, by default the RFC 2449/3206 response
        code that fits (``[AUTH]`` for credentials, ``[SYS/TEMP]`` otherwise)."""
        event = self._pending
        if isinstance(event, AuthLookup):
            raise LocalProtocolError("answer AuthLookup with auth_resolve()")
        if text is not None:
            _check_text(text)
        event = self._take_pending()
        reason = text or "bad credentials"  # LoginFailed tells a refusal from a wrong password
        text = text or _REJECT_DEFAULTS[type(event)]
        match event:
            case Login() | ApopLogin():
                self._login_failed(event.user, reason)
                self._error(text)
            case Update():
                self._stop(text, "quit, deletion failed")
            case _:
                self._error(text)

    def accept_mailbox(self, listing: Sequence[tuple[int, str]]) -> None:
        """Answer MailboxOpen: the messages as ``(size_octets, uid)``, numbered 1..n in this
        order (RFC 1939 section 5); the engine enters TRANSACTION state."""
        if not isinstance(self._pending, MailboxOpen):
            raise LocalProtocolError("no MailboxOpen is pending")
        messages = [_Message(size, uid) for size, uid in listing]
        _check_listing(messages)
        event = self._take_pending()
        assert isinstance(event, MailboxOpen)
        self._messages = messages
        self.user = event.user
        self._enter("mailbox-open")
        owner = f"{event.user}'s" if _displayable(event.user) else "your"
        self._ok(f"{owner} maildrop has {self._summary()}")

    def send_content(self, data: bytes) -> None:
        """The next part of the message accepted for RETR/TOP, as stored; any chunking."""
        if self._content is None:
            raise LocalProtocolError("send_content() without an accepted Retrieve")
        if encoded := self._content.encode(data):
            self._out.append(encoded)

    def end_content(self) -> None:
        """The message is complete: terminate the multi-line response (RFC 1939 section 3)."""
        if self._content is None:
            raise LocalProtocolError("end_content() without an accepted Retrieve")
        self._out.append(self._content.finish())
        self._content = None
        self._enter("end-content")

    def tls_started(self) -> None:
        """After the TLS handshake: a fresh AUTHORIZATION state, nothing said in plaintext kept
        (RFC 2595 section 4)."""
        if self.state is not State.TLS_HANDSHAKE:
            raise LocalProtocolError("tls_started() without an accepted STLS")
        self._lines.clear()
        self._events.clear()
        self.tls_active = True
        self._user_arg = None
        self._enter("tls-started")

    def close_with(self, text: str) -> None:
        """Stop with a final ``-ERR text`` (shutdown, the autologout timer of RFC 1939 section 3),
        never entering UPDATE. While content is being sent, no reply is possible: just close."""
        _check_text(text)
        final = None if self.state is State.CONTENT else text
        self._pending = None
        self._content = None
        self._events.clear()
        self._stop(final, text)

    # --- internals -------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        self._out.append(data)

    def _ok(self, text: str = "") -> None:
        self._send(b"+OK " + text.encode() + b"\r\n" if text else b"+OK\r\n")

    def _multi(self, first: str, lines: Sequence[str]) -> None:
        """A multi-line response (RFC 1939 section 3): byte-stuffed lines, then ``.``."""
        self._ok(first)
        for line in lines:
            self._send(("." + line if line.startswith(".") else line).encode() + b"\r\n")
        self._send(b".\r\n")

    def _encode_error(self, error: str) -> bytes:
        return b"-ERR " + error.encode() + b"\r\n"

    def _closing(self, why: str) -> str | None:
        # The -ERR to a line without end already says why; after the last of too many errors, a
        # second -ERR does. Either way the engine closes without UPDATE (RFC 1939 section 6).
        return None if why == "line too long" else why

    def _verified(self, user: str) -> None:
        """Credentials are good: ask the session to open the maildrop (RFC 1939 section 4)."""
        self._enter("verified")
        self._emit(MailboxOpen(user=user))

    def _login_failed(self, user: str | None, reason: str) -> None:
        """LoginFailed for the session; the caller sends the ``-ERR``."""
        self._enter("login-failed")
        self._emit(LoginFailed(user=user, reason=reason))

    def _visible(self) -> list[tuple[int, _Message]]:
        """The messages not marked deleted, with their numbers (RFC 1939 section 5)."""
        return [(n, m) for n, m in enumerate(self._messages, 1) if not m.deleted]

    def _summary(self) -> str:
        visible = self._visible()
        return f"{_count(len(visible), 'message')} ({sum(m.size for _, m in visible)} octets)"

    # --- commands --------------------------------------------------------------------------
    def _screen(self, raw: bytes) -> bool:
        """RFC 2449 section 4: the line limit, judged on the line as sent before it is read as
        text (AUTH lines may be longer, RFC 5034 section 4)."""
        verb = raw.rstrip(b"\r\n").split(b" ", 1)[0].upper()
        if len(raw) > (AUTH_LINE_MAX if verb == b"AUTH" else COMMAND_LINE_MAX):
            self._error(self.line_too_long)
            return False
        return True

    def _dispatch(self, verb: str, arg: str) -> None:
        """State.USER lasts one command: PASS must follow USER directly (RFC 1939 section 7),
        and any command ends it; only a PASS right after it reads the name (``_user_arg``)."""
        if self.state is State.USER:
            self._enter("next-command")
        super()._dispatch(verb, arg)
        if self.state is not State.USER:
            self._user_arg = None

    def _unknown(self, verb: str) -> str:
        return "unknown command"

    def _out_of_sequence(self, verb: str) -> str:
        return "log in first" if self.state is State.AUTHORIZATION else "already logged in"

    def _syntax(self, verb: str) -> None:
        self._error(f"syntax: {_USAGE[verb]}")

    # --- AUTHORIZATION state (RFC 1939 section 4 and 7) ---------------------------------------
    def _plaintext_allowed(self) -> bool:
        """RFC 2595 section 2: no cleartext passwords before TLS unless configured so."""
        return self.tls_active or not self.config.plaintext_requires_tls

    def _user_refusal(self) -> str | None:
        if not self.config.user_command:
            return "[AUTH] USER/PASS is not offered here"
        return None if self._plaintext_allowed() else _PLAINTEXT_REFUSED

    def _do_user(self, arg: str) -> None:
        refusal = self._user_refusal()
        if refusal is not None:
            self._error(refusal)
        elif not arg or " " in arg:
            self._syntax("USER")
        else:
            self._user_arg = arg
            self._enter("user")
            self._ok("send PASS")

    def _do_pass(self, arg: str) -> None:
        """RFC 1939 section 7: the argument is the rest of the line, spaces included."""
        user = self._user_arg
        refusal = self._user_refusal()
        if refusal is not None:
            self._error(refusal)
        elif user is None:
            self._error("USER first")
        elif not arg:
            self._syntax("PASS")
        else:
            self._emit(Login(user=user, password=arg))

    def _do_apop(self, arg: str) -> None:
        words = arg.split(" ")
        if not self.config.apop:
            self._error("APOP is not offered here")
        elif len(words) != 2 or not words[0] or not _DIGEST.fullmatch(words[1]):
            self._syntax("APOP")
        else:
            self._emit(ApopLogin(user=words[0], digest=words[1].lower(), timestamp=self.config.timestamp))

    def _do_stls(self, arg: str) -> None:
        if arg:
            self._syntax("STLS")
        elif self.tls_active:
            self._error("TLS is already active")
        elif not self.config.tls_available:
            self._error("STLS is not offered here")
        else:
            self._emit(StartTLS())

    def _do_quit(self, arg: str) -> None:
        if arg:
            self._syntax("QUIT")
        elif self.state is State.AUTHORIZATION:
            self._ok(f"{self.config.hostname} POP3 server signing off")
            self._stop(None, "quit")
        else:
            self._enter("quit")
            self._emit(Update(deleted_uids=tuple(m.uid for m in self._messages if m.deleted)))

    # --- CAPA (RFC 2449 section 5 and 6) -------------------------------------------------------
    def _do_capa(self, arg: str) -> None:
        if arg:
            self._syntax("CAPA")
        else:
            self._multi("Capability list follows", self.capabilities())

    def capabilities(self) -> list[str]:
        """The CAPA lines for the current state: what a client may use now."""
        c = self.config
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.state in (State.AUTHORIZATION, State.USER):
            if self._user_refusal() is None:
                caps.append("USER")
            if mechanisms := self.usable_mechanisms():
                caps.append("SASL " + " ".join(mechanisms))
            if c.tls_available and not self.tls_active:
                caps.append("STLS")
        caps.append(f"EXPIRE {c.expire}")
        caps.append(f"LOGIN-DELAY {c.login_delay}")  # RFC 2449 6.5: 0 says "no delay" outright
        if c.implementation:
            caps.append(f"IMPLEMENTATION {c.implementation}")
        return caps

    def usable_mechanisms(self) -> tuple[str, ...]:
        """The configured SASL mechanisms a client may start now (plaintext ones need TLS)."""
        return tuple(m for m in self._mechanisms
                     if m not in self._plaintext_mechs or self._plaintext_allowed())

    # --- AUTH (RFC 5034) ---------------------------------------------------------------------
    def _do_auth(self, arg: str) -> None:
        name, _, initial_text = arg.partition(" ")
        name = ascii_upper(name)
        if not name:  # RFC 1734 clients: list the mechanisms
            self._multi("SASL mechanisms follow", self.usable_mechanisms())
        elif name not in self._mechanisms:
            self._error("unsupported method")
        elif name not in self.usable_mechanisms():
            self._error(_PLAINTEXT_REFUSED)
        else:
            self._auth_begin(name, initial_text.strip(" "))

    def _auth_begin(self, name: str, initial_text: str) -> None:
        initial = sasl.decode_response(initial_text) if initial_text else None
        if initial_text and initial is None:
            self._error("bad base64 in the initial response")
            return
        self._auth_start(name, initial)  # only known names get here

    def _challenge(self, data: bytes) -> bytes:
        return b"+ " + data + b"\r\n"  # RFC 5034 section 4

    def _auth_end(self, user: str | None, reason: str) -> None:
        """MailboxOpen on success; LoginFailed for the name the mechanism last saw otherwise."""
        assert self._auth is not None
        tried, self._auth = self._auth.user, None
        if user is None:
            self._login_failed(tried, reason)
        else:
            self._verified(user)

    # --- TRANSACTION state (RFC 1939 section 5 and 7) -----------------------------------------
    def _message(self, text: str) -> int | None:
        """The number of a message that exists and is not deleted, or None after ``-ERR``."""
        if not text.isascii() or not text.isdigit() or not 0 < int(text) <= len(self._messages):
            self._error("no such message")
            return None
        number = int(text)
        if self._messages[number - 1].deleted:
            self._error(f"message {number} already deleted")
            return None
        return number

    def _do_stat(self, arg: str) -> None:
        if arg:
            self._syntax("STAT")
            return
        visible = self._visible()
        self._ok(f"{len(visible)} {sum(m.size for _, m in visible)}")

    def _do_list(self, arg: str) -> None:
        self._scan_listing(arg, "LIST", lambda m: str(m.size), self._summary())

    def _do_uidl(self, arg: str) -> None:
        self._scan_listing(arg, "UIDL", lambda m: m.uid, "unique-id listing follows")

    def _scan_listing(self, arg: str, verb: str, value: Callable[[_Message], str], header: str) -> None:
        """LIST and UIDL: one message as a single line, or all of them multi-line."""
        words = arg.split(" ") if arg else []
        if len(words) > 1:
            self._syntax(verb)
        elif words:
            if (number := self._message(words[0])) is not None:
                self._ok(f"{number} {value(self._messages[number - 1])}")
        else:
            # One bytes object for the whole listing instead of a reply per line; its lines start
            # with a message number, so none needs dot-stuffing.
            self._ok(header)
            self._send("".join([f"{n} {value(m)}\r\n" for n, m in self._visible()]).encode() + b".\r\n")

    def _do_retr(self, arg: str) -> None:
        if not arg or " " in arg:
            self._syntax("RETR")
        elif (number := self._message(arg)) is not None:
            self._emit(Retrieve(number=number, uid=self._messages[number - 1].uid))

    def _do_top(self, arg: str) -> None:
        words = arg.split(" ")
        if len(words) != 2 or not words[1].isascii() or not words[1].isdigit():
            self._syntax("TOP")
        elif (number := self._message(words[0])) is not None:
            self._emit(Retrieve(number=number, uid=self._messages[number - 1].uid, lines=int(words[1])))

    def _retrieve_accepted(self, event: Retrieve) -> None:
        if event.lines is None:
            self._ok(f"{self._messages[event.number - 1].size} octets")
        else:
            self._ok("top of message follows")
        self._content = ContentEncoder(event.lines)
        self._enter("retrieve")

    def _do_dele(self, arg: str) -> None:
        if not arg or " " in arg:
            self._syntax("DELE")
        elif (number := self._message(arg)) is not None:
            self._messages[number - 1].deleted = True
            self._ok(f"message {number} deleted")

    def _do_noop(self, arg: str) -> None:
        if arg:
            self._syntax("NOOP")
        else:
            self._ok()

    def _do_rset(self, arg: str) -> None:
        if arg:
            self._syntax("RSET")
            return
        for message in self._messages:
            message.deleted = False
        self._ok(f"maildrop has {self._summary()}")
