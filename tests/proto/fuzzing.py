"""What the SMTP and POP3 property tests share: example budgets, input splitting, a measure of
the bytes an engine holds, the session side's answers chosen by hypothesis, and deterministic
SASL randomness (so that two runs of one session can be compared byte for byte)."""

from __future__ import annotations

import contextlib
import enum
import types
from collections import deque
from collections.abc import Iterator, Sequence
from typing import TypeVar

from hypothesis import settings
from hypothesis import strategies as st

from taube.proto import sasl

T = TypeVar("T")

def examples(short: int) -> settings:
    """``short`` examples under the default profile (``make test``), or the profile's own count
    where it is larger (``make fuzz``)."""
    return settings(max_examples=max(short, settings.default.max_examples))


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
