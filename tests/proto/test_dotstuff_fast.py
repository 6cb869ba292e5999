"""The DATA decoder's whole-read path (DataDecoder._feed_clean) against its line-by-line rules
(DataDecoder._feed_lines): for any input and any split into reads, the same content, end, rest,
dropped octets and findings; and the clean path really is taken for ordinary mail."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taube.proto import dotstuff
from taube.proto.dotstuff import MAX_TEXT_LINE, DataDecoder, DecodeResult


class LineByLine(DataDecoder):
    """The reference: every read through the line rules."""

    __slots__ = ()

    def feed(self, data: bytes) -> DecodeResult:
        buf = self._pending + data if self._pending else data
        return self._feed_lines(buf)


def findings(d: DataDecoder) -> tuple[object, ...]:
    return (d.bare_newline, d.line_too_long, d.received_count, d.header_too_large,
            d._in_headers, d._after_crlf, d._overlong, d._pending)  # noqa: SLF001


def run(decoder: DataDecoder, chunks: list[bytes]) -> list[tuple[bytes, bool, bytes, int]]:
    results = []
    for chunk in chunks:
        r = decoder.feed(chunk)
        results.append((r.content, r.ended, r.rest, r.dropped))
        if r.ended:
            break
    return results


# Pieces that make every rule fire: line ends of all kinds, dots at line starts, the end
# marker, Received fields, the empty line, and runs around the line limit.
PIECES = [b"\r\n", b"\n", b"\r", b".", b"..", b".\r\n", b"\r\n.\r\n", b"x", b"Received: a",
          b"received:b", b" folded", b"Subject: s", b"\r\n\r\n", b"y" * 40, b"z" * 498,
          b"w" * (MAX_TEXT_LINE - 2), b"v" * (MAX_TEXT_LINE - 1), b"u" * (MAX_TEXT_LINE + 3)]


@st.composite
def wire(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    data = b"".join(draw(st.lists(st.sampled_from(PIECES), max_size=40)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    return data, [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


@given(wire(), st.booleans(), st.sampled_from([None, 0, 30, 2000]))
@settings(max_examples=1500)
def test_the_same_as_line_by_line(case: tuple[bytes, list[bytes]], normalize: bool,
                                  header_size: int | None) -> None:
    _, chunks = case
    fast = DataDecoder(normalize=normalize, max_header_size=header_size)
    slow = LineByLine(normalize=normalize, max_header_size=header_size)
    assert run(fast, chunks) == run(slow, chunks)
    assert findings(fast) == findings(slow)


@given(st.lists(st.binary(max_size=120), max_size=25), st.integers(1, 300))
@settings(max_examples=300)
def test_random_octets_in_fixed_reads(lines: list[bytes], size: int) -> None:
    data = b"\r\n".join(lines) + b"\r\n.\r\nRSET\r\n"
    chunks = [data[i:i + size] for i in range(0, len(data), size)]
    fast, slow = DataDecoder(max_header_size=100), LineByLine(max_header_size=100)
    assert run(fast, chunks) == run(slow, chunks)
    assert findings(fast) == findings(slow)


@pytest.mark.parametrize("lines", [
    [b"a" * (MAX_TEXT_LINE - 2)],  # exactly at the limit with its CRLF
    [b"a" * (MAX_TEXT_LINE - 1)],  # one over
    [b"b" * 10, b"a" * (MAX_TEXT_LINE * 3), b"c"],
    [b"d" * 499, b"e" * 999, b"f" * 500],
])
def test_long_lines_found_by_block(lines: list[bytes]) -> None:
    whole = b"".join(line + b"\r\n" for line in lines)
    assert dotstuff._has_long_line(whole + b"x" * 5000, len(whole)) == any(len(line) + 2 > MAX_TEXT_LINE for line in lines)  # noqa: SLF001


def test_ordinary_mail_takes_no_line_by_line_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: DataDecoder, buf: bytes) -> DecodeResult:
        raise AssertionError("line by line")

    monkeypatch.setattr(DataDecoder, "_feed_lines", refuse)
    body = b"".join(b"line %d with some text\r\n" % n for n in range(3000))
    message = (b"Received: from a\r\nReceived: from b\r\nSubject: hi\r\n\r\n" + body
               + b"..a stuffed dot\r\n")
    wire_form = message + b".\r\nQUIT\r\n"
    d = DataDecoder(max_header_size=1000)
    out = []
    for i in range(0, len(wire_form), 65536):  # as the session reads a big message
        r = d.feed(wire_form[i:i + 65536])
        out.append(r.content)
    assert r.ended and r.rest == b"QUIT\r\n"
    assert b"".join(out) == message.replace(b"\r\n..a", b"\r\n.a")
    assert d.received_count == 2 and not d.header_too_large and not d.bare_newline
