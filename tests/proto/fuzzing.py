"""What the SMTP and POP3 property tests share: example budgets, random input and input
splitting, a measure of the bytes an engine holds, the session side's answers chosen by
hypothesis, the driver's run loop and memory checks (:class:`EngineDriver`), and deterministic
SASL randomness (so that two runs of one session can be compared byte for byte)."""

from __future__ import annotations

import contextlib
import enum
import types
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st

from taube.proto import sasl
from taube.proto.common import NEED_DATA

T = TypeVar("T")


def examples(short: int) -> settings:
    """``short`` examples under the default profile (``make test``), or the profile's own count
    where it is larger (``make fuzz``)."""
    return settings(max_examples=max(short, settings.default.max_examples))


# --- random input ---------------------------------------------------------------------------
def repeat(unit: bytes, count: int) -> bytes:
    return unit * count


def fuzz_input(tokens: Sequence[bytes], runs: Sequence[bytes], line_runs: Sequence[bytes], *,
               binary_max: int, run_max: int, token_weight: int = 1) -> st.SearchStrategy[bytes]:
    """Random bytes, or up to 40 pieces joined: protocol ``tokens`` (``token_weight`` times as
    likely as each other kind), short random bytes, long ``runs`` of one unit without a line end
    (up to ``run_max`` units) and runs of many short lines (``line_runs``)."""
    return st.one_of(
        st.binary(max_size=binary_max),
        st.lists(st.one_of(*[st.sampled_from(tokens)] * token_weight, st.binary(max_size=16),
                           st.builds(repeat, st.sampled_from(runs), st.integers(1, run_max)),
                           st.builds(repeat, st.sampled_from(line_runs), st.integers(1, 300))),
                 max_size=40).map(b"".join),
    )


def command_lines(good: Sequence[str], verbs: Sequence[str], args: Sequence[str],
                  raw: Sequence[str]) -> st.SearchStrategy[list[bytes]]:
    """Up to 40 lines ending in CRLF: ``good`` lines a client may send, commands of a verb and an
    argument drawn apart (each of these two twice as likely as the rest), ``raw`` lines (SASL
    responses, message text) and random text."""
    commands = st.builds(lambda v, a: f"{v} {a}" if a else v, st.sampled_from(verbs), st.sampled_from(args))
    return st.lists(
        st.one_of(
            st.sampled_from(good), st.sampled_from(good), commands, commands,
            st.sampled_from(raw),
            st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n"), max_size=30),
        ).map(lambda line: line.encode("utf-8") + b"\r\n"),
        max_size=40,
    )


# --- splitting input ------------------------------------------------------------------------
# Cut points as fractions of the input (in 1/65536), so that the number of chunks stays small
# however long the input is, and shrinking moves cuts rather than growing lists.
cuts = st.lists(st.integers(0, 1 << 16), max_size=40)


def split(data: bytes, fractions: Sequence[int]) -> list[bytes]:
    """``data`` cut at the given fractions of its length (empty pieces dropped)."""
    points = sorted({f * len(data) >> 16 for f in fractions} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def lines_of(data: bytes) -> list[bytes]:
    """``data`` cut after every LF (the last piece may have none)."""
    out, start = [], 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end + 1
        out.append(data[start:end])
        start = end
    return out


def printable_text(data: bytes, line: bytes, kind: str) -> str:
    """``data``, the text of the ``kind`` (reply, response) ``line``, as UTF-8 without control
    characters but tabs; else an AssertionError."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AssertionError(f"{kind} text is not UTF-8: {line!r}") from None
    assert text.replace("\t", " ").isprintable(), f"control characters in a {kind}: {line!r}"
    return text


def verb_of(line: bytes) -> str | None:
    """The command verb as the engines read it (UTF-8, upper case if ASCII: keywords compare in
    ASCII only), None if not UTF-8."""
    try:
        text = line.rstrip(b"\r\n").decode("utf-8")
    except UnicodeDecodeError:
        return None
    verb = text.partition(" ")[0]
    return verb.upper() if verb.isascii() else verb


def segments(data: bytes, verb: str) -> list[bytes]:
    """``data`` cut after every line that may be ``verb`` (STARTTLS, STLS): the session does the
    TLS handshake there, so what follows is read only afterwards (RFC 3207 section 5, RFC 2595
    section 4: nothing pipelined past it is executed)."""
    out, start, pos = [], 0, 0
    for line in lines_of(data):
        pos += len(line)
        if line.endswith(b"\n") and verb_of(line) == verb:
            out.append(data[start:pos])
            start = pos
    return [s for s in out + [data[start:]] if s]


# --- the session side's answers ---------------------------------------------------------------
# One number per decision, in the order the decisions come: the answers depend only on how
# many decisions came before, never on how the input was split, so two runs of the same
# session see the same answers. Small numbers (what hypothesis shrinks to) say yes.
answers = st.lists(st.integers(0, 255), max_size=60)
YES_BELOW = 224  # seven times in eight: deep states stay reachable


class Policy:
    """Picks the session's answer to each decision from the drawn numbers."""

    def __init__(self, numbers: Sequence[int]) -> None:
        self.numbers = list(numbers) or [0]
        self.count = 0

    def pick(self, options: Sequence[T]) -> T:
        """``options[0]`` (the yes) most of the time, else one of the others."""
        value = self.numbers[self.count % len(self.numbers)]
        self.count += 1
        if value < YES_BELOW or len(options) == 1:
            return options[0]
        return options[1 + (value - YES_BELOW) % (len(options) - 1)]

    def lookup(self, request: object) -> object:
        """The directory's answer to a SASL look-up: right or wrong password, a secret or none,
        SCRAM credentials or none."""
        if isinstance(request, sasl.CheckPassword):
            return self.pick([True, False])
        if isinstance(request, sasl.NeedSecret):
            return self.pick([SECRET, None])
        return self.pick([SCRAM_CREDENTIALS, None])


# --- what an engine holds -----------------------------------------------------------------------
_ATOMS = (int, float, complex, bool, type(None), enum.Enum, type, types.ModuleType,
          types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.MethodWrapperType)


def retained(obj: object) -> int:
    """Octets (and characters) of every bytes, bytearray and str reachable from ``obj``: the
    line buffer, the DATA decoder's carry, queued events and output, SASL state, whatever the
    engine keeps, under whatever name. Shared objects count once."""
    total = 0
    seen: set[int] = set()
    stack: list[object] = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, _ATOMS):
            continue
        seen.add(id(o))
        if isinstance(o, (bytes, bytearray, str)):
            total += len(o)
        elif isinstance(o, memoryview):
            total += o.nbytes
        elif isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset, deque)):
            stack.extend(o)
        else:
            stack.extend(getattr(o, "__dict__", {}).values())
            for cls in type(o).__mro__:
                slots = cls.__dict__.get("__slots__", ())
                for name in (slots,) if isinstance(slots, str) else slots:
                    if name not in ("__dict__", "__weakref__") and hasattr(o, name):
                        stack.append(getattr(o, name))
    return total


def queued_events(conn: object) -> int:
    """How many events the engine has queued (0 if it keeps them elsewhere)."""
    events = getattr(conn, "_events", ())
    return len(events)


# --- the session side's run loop ----------------------------------------------------------------
class EngineDriver:
    """Plays the session around an engine (``conn``): each read in, the engine run to NEED_DATA
    or its ``closed_type`` event, the output taken as the session takes it; after Closed
    nothing more may come out nor be kept. With ``check_memory``, the engine holds at most
    ``held_max`` octets (plus the read under way) after every read, and its line buffer at most
    ``line_max`` once the read is handled. Subclasses answer the other events (:meth:`handle`)."""

    closed_type: type
    tls_verb: str  # the command after which the session does the TLS handshake

    def __init__(self, conn: Any, *, held_max: int, line_max: int, check_memory: bool = False) -> None:
        self.conn = conn
        self.held_max = held_max
        self.line_max = line_max
        self.check_memory = check_memory
        self.out = bytearray()
        self.events: list[Any] = []
        self.closed = False

    def feed(self, data: bytes) -> bytes:
        """One read: ``data`` (``b""``: the peer closed) in, the replies it caused out."""
        if self.closed:  # the session has closed; nothing may come out any more
            held = retained(self.conn)
            self.conn.receive_data(data)
            assert isinstance(self.conn.next_event(), self.closed_type)
            assert self.conn.data_to_send() == b"", "output after Closed"
            assert retained(self.conn) <= held, "input kept after Closed"
            return b""
        self.conn.receive_data(data)
        if self.check_memory:
            self.check_held(len(data))
        produced = self.run()
        if self.check_memory:
            # Once closed, the rest of the last read may stay behind (the session drops the
            # engine then); it must not grow any more (checked above).
            self.check_held(len(data) if self.closed else 0)
        return produced

    def run(self) -> bytes:
        start = len(self.out)
        while True:
            event = self.conn.next_event()
            if self.check_memory:
                assert queued_events(self.conn) <= 8, "events pile up"
            if event is NEED_DATA:
                break
            if isinstance(event, self.closed_type):
                self.events.append(event)
                self.closed = True
                break
            self.handle(event)
        self.out += self.conn.data_to_send()
        return bytes(self.out[start:])

    def handle(self, event: Any) -> None:
        raise NotImplementedError

    def check_held(self, just_read: int) -> None:
        held = retained(self.conn)
        assert held <= self.held_max + just_read, f"the engine holds {held} octets after a read of {just_read}"
        lines = getattr(self.conn, "_lines", None)
        if lines is not None and not just_read:
            assert len(lines) <= self.line_max, f"line buffer holds {len(lines)} octets"

    def feed_stream(self, data: bytes, chunking: Callable[[bytes], list[bytes]]) -> None:
        """``data`` cut after each line that may be :attr:`tls_verb` (see :func:`segments`) and
        into reads by ``chunking``, then the peer's close."""
        for segment in segments(data, self.tls_verb):
            for chunk in chunking(segment):
                self.feed(chunk)
        self.feed(b"")

    def feed_megabytes(self, prefix: bytes, filler: bytes) -> None:
        """Property 2's input: ``prefix``, then 4 MiB of ``filler`` without a line end in reads of
        64 KiB, answered with at most a few replies, then a line end and QUIT."""
        self.feed(prefix)
        before = len(self.out)
        read = (filler * (65536 // len(filler)))[:65536]
        for _ in range(64):
            self.feed(read)
        assert len(self.out) - before <= 1024, bytes(self.out[before:])
        self.feed(b"\r\nQUIT\r\n")

    def difference(self, expected: EngineDriver) -> str:
        """Where this driver's output first differs from ``expected``'s, for a failure message."""
        raise NotImplementedError


def assert_same(got: EngineDriver, expected: EngineDriver) -> None:
    """The same bytes out and the same events; a difference is shown where it starts."""
    if got.out != expected.out:
        raise AssertionError(got.difference(expected))
    assert got.events == expected.events


# --- deterministic SASL nonces ----------------------------------------------------------------
class _FixedSecrets:
    """Stands in for the ``secrets`` module inside :mod:`taube.proto.sasl`: CRAM-MD5 challenges,
    SCRAM nonces and fake salts become the same in every run."""

    @staticmethod
    def token_bytes(n: int | None = None) -> bytes:
        return bytes(range(1, (n or 32) + 1))

    @staticmethod
    def token_hex(n: int | None = None) -> str:
        return "a5" * (n or 32)

    @staticmethod
    def randbelow(n: int) -> int:
        return 1234567 % n


@contextlib.contextmanager
def fixed_sasl_randomness() -> Iterator[None]:
    saved = sasl.secrets
    sasl.secrets = _FixedSecrets  # type: ignore[assignment]
    try:
        yield
    finally:
        sasl.secrets = saved


SECRET = "correct horse battery staple"
SCRAM_CREDENTIALS = sasl.scram_credentials(SECRET, salt=b"0123456789abcdef")


# Characters Python upper-cases to ASCII letters: a verb spelled with one must never be a command.
LOOKALIKES = {c: c.upper() for c in "\u00df\u0131\u017f\ufb00\ufb01\ufb02\ufb03\ufb04\ufb05\ufb06"}


def lookalike_spellings(word: str) -> list[str]:
    """``word`` with one of its letters (or letter pairs) replaced by a non-ASCII character that
    upper-cases to them."""
    out = []
    for char, upper in LOOKALIKES.items():
        i = word.find(upper)
        while i >= 0:
            out.append(word[:i] + char + word[i + len(upper):])
            i = word.find(upper, i + 1)
    return out
