"""Message content to the wire for RETR and TOP (RFC 1939 sections 3 and 7): the chunked,
bytes-level encoder gives exactly what a line-by-line model of the rules gives, however the
content is cut into chunks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taube.proto.dotstuff import ContentEncoder, _after_nth_lf, stuff


def model(message: bytes, body_lines: int | None) -> bytes:
    """The rules, one line at a time: a line ends at LF (bare or not); TOP keeps the header up
    to and including the first empty line (LF or CR LF alone) and then ``body_lines`` lines; a
    line starting with a dot gets another; the last line gets its CRLF; then the final dot."""
    parts = message.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    if body_lines is not None:
        kept, in_header, left = [], True, body_lines
        for line in lines:
            if not in_header and left == 0:
                break
            kept.append(line)
            if in_header:
                in_header = line not in (b"\n", b"\r\n")
            elif line.endswith(b"\n"):
                left -= 1
        lines = kept
    wire = b"".join(b"." + line if line.startswith(b".") else line for line in lines)
    if wire and not wire.endswith(b"\r\n"):
        wire += b"\n" if wire.endswith(b"\r") else b"\r\n"
    return wire + b".\r\n"


def encode(message: bytes, body_lines: int | None, cuts: list[int]) -> tuple[bytes, ContentEncoder]:
    """Feed ``message`` cut at ``cuts`` (positions, any order, repeats allowed), as the session
    does: stop feeding once the encoder no longer wants content."""
    encoder = ContentEncoder(body_lines)
    out = []
    bounds = [0, *sorted(c % (len(message) + 1) for c in cuts), len(message)]
    for start, end in zip(bounds, bounds[1:]):
        if encoder.complete:
            break
        out.append(encoder.encode(message[start:end]))
    out.append(encoder.finish())
    return b"".join(out), encoder


# Content made of what matters: dots, CR, LF, and a filler byte; plus some runs of it.
pieces = st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"a", b"..", b"\r\n.", b"\n\n", b"\r\n\r\n", b"xyz"])
many_lines = st.lists(st.sampled_from([b"\n", b"a\r\n", b".", b"\r\n", b"bc"]), min_size=40, max_size=250)
messages = st.lists(pieces, max_size=60).map(b"".join) | st.binary(max_size=300) | many_lines.map(b"".join)
cut_lists = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)
top_lines = st.none() | st.integers(min_value=0, max_value=8) | st.integers(min_value=30, max_value=80)


@settings(max_examples=400)
@given(message=messages, body_lines=top_lines, cuts=cut_lists)
def test_chunked_encoding_equals_the_line_model(message: bytes, body_lines: int | None,
                                                cuts: list[int]) -> None:
    got, _ = encode(message, body_lines, cuts)
    assert got == model(message, body_lines)


body_line = st.sampled_from([b"\n", b"a\r\n", b".x\r\n", b"\r\n", b"..\n", b"bc\r\n"])


@st.composite
def long_tops(draw: st.DrawFn) -> tuple[bytes, int]:
    """A message with a long body and a TOP line count somewhere within it (or just past)."""
    header = draw(st.sampled_from([b"", b"H: v\r\n", b"H: v\nI: w\r\n"]))
    body = draw(st.lists(body_line, min_size=30, max_size=150))
    return header + b"\r\n" + b"".join(body), draw(st.integers(min_value=0, max_value=len(body) + 2))


@settings(max_examples=200)
@given(top=long_tops(), cuts=st.lists(st.integers(0, 2000), max_size=3))
def test_top_of_long_bodies_equals_the_line_model(top: tuple[bytes, int], cuts: list[int]) -> None:
    """Many body lines in few chunks: the line searched for is far into a chunk."""
    message, body_lines = top
    assert encode(message, body_lines, cuts)[0] == model(message, body_lines)


@settings(max_examples=100)
@given(message=messages, body_lines=top_lines)
def test_one_byte_at_a_time_equals_whole(message: bytes, body_lines: int | None) -> None:
    whole, _ = encode(message, body_lines, [])
    bytewise, _ = encode(message, body_lines, list(range(len(message))))
    assert bytewise == whole


@settings(max_examples=200)
@given(message=messages, cuts=cut_lists)
def test_retr_output_never_holds_a_premature_end(message: bytes, cuts: list[int]) -> None:
    """Whatever the content, the only CRLF . CRLF is the final one, and unstuffing gives the
    message back (plus the CRLF a last line without one gets)."""
    wire, encoder = encode(message, None, cuts)
    assert not encoder.complete  # RETR always wants everything
    body = wire[:-3]
    assert b"\r\n.\r\n" not in b"\r\n" + body and b"\n.\r\n" not in b"\n" + body
    unstuffed = body.replace(b"\n..", b"\n.")
    unstuffed = unstuffed[1:] if unstuffed.startswith(b"..") else unstuffed
    assert unstuffed.startswith(message) and len(unstuffed) - len(message) <= 2


@pytest.mark.parametrize(("message", "lines", "wire"), [
    (b"", None, b".\r\n"),
    (b"", 0, b".\r\n"),
    (b"H: v\r\n\r\nb1\r\nb2\r\n", 0, b"H: v\r\n\r\n.\r\n"),
    (b"H: v\r\n\r\nb1\r\nb2\r\n", 1, b"H: v\r\n\r\nb1\r\n.\r\n"),
    (b"H: v\r\n\r\nb1\r\nb2\r\n", 99, b"H: v\r\n\r\nb1\r\nb2\r\n.\r\n"),  # more lines than the body
    (b"H: v\r\n\r\nb1\r\nb2", 99, b"H: v\r\n\r\nb1\r\nb2\r\n.\r\n"),  # no final line end
    (b"H: v\r\nno empty line", 0, b"H: v\r\nno empty line\r\n.\r\n"),  # all header
    (b"\r\nbody\r\n", 0, b"\r\n.\r\n"),  # no header at all: the first line is the empty one
    (b"H: v\n\n.b1\n.b2\n", 1, b"H: v\n\n..b1\n\r\n.\r\n"),  # bare LF ends lines too
    (b".\r\n..\r\n", None, b"..\r\n...\r\n.\r\n"),
    (b"ends in CR\r", None, b"ends in CR\r\n.\r\n"),
])
def test_examples(message: bytes, lines: int | None, wire: bytes) -> None:
    for cuts in ([], list(range(len(message)))):
        assert encode(message, lines, cuts)[0] == wire


def test_top_completes_and_then_takes_nothing() -> None:
    encoder = ContentEncoder(1)
    assert encoder.encode(b"H: v\r\n\r\nline 1\r\nline 2\r\n") == b"H: v\r\n\r\nline 1\r\n"
    assert encoder.complete
    assert encoder.encode(b".more\r\n") == b""
    assert encoder.finish() == b".\r\n"


def test_top_with_zero_lines_completes_at_the_end_of_the_header() -> None:
    encoder = ContentEncoder(0)
    assert encoder.encode(b"H: v\r\n\r") == b"H: v\r\n\r"
    assert not encoder.complete
    assert encoder.encode(b"\nbody\r\n") == b"\n"
    assert encoder.complete


def test_negative_top_lines_are_refused() -> None:
    with pytest.raises(ValueError):
        ContentEncoder(-1)


@pytest.mark.parametrize("n", [1, 2, 31, 32, 33, 100, 999])
def test_nth_line_end_found_by_search_and_by_bisection_alike(n: int) -> None:
    data = b"".join(b"x" * (i % 7) + b"\n" for i in range(1000))
    expected = [i for i, byte in enumerate(data) if byte == 0x0A][n - 1] + 1
    assert _after_nth_lf(data, 0, n) == expected
    start = data.index(b"\n") + 1
    assert _after_nth_lf(data, start, n) == [i for i, byte in enumerate(data) if byte == 0x0A][n] + 1


@given(st.binary(max_size=200), st.booleans())
def test_stuff_doubles_every_dot_at_a_line_start(data: bytes, at_line_start: bool) -> None:
    expected = data.replace(b"\n.", b"\n..")
    if at_line_start and data.startswith(b"."):
        expected = b"." + expected
    assert stuff(data, at_line_start) == expected
