"""The DATA decoder alone: end marker, unstuffing, bare CR/LF, long lines, chunking invariance."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taube.proto.dotstuff import MAX_TEXT_LINE, DataDecoder, stuff


def decode(chunks: list[bytes], normalize: bool = False) -> tuple[bytes, bool, bytes, DataDecoder]:
    d = DataDecoder(normalize=normalize)
    out = []
    for chunk in chunks:
        r = d.feed(chunk)
        out.append(r.content)
        if r.ended:
            return b"".join(out), True, r.rest, d
    return b"".join(out), False, b"", d


def after_end(chunks: list[bytes]) -> bytes | None:
    """Every octet the decoder hands back after the end marker: the rest of the chunk that held
    it, then the chunks it was never fed; None if the data did not end."""
    d = DataDecoder()
    for i, chunk in enumerate(chunks):
        r = d.feed(chunk)
        if r.ended:
            return r.rest + b"".join(chunks[i + 1:])
    return None


@pytest.mark.parametrize(("data", "content", "rest"), [
    (b".\r\n", b"", b""),
    (b"a\r\n.\r\nNEXT", b"a\r\n", b"NEXT"),
    (b"..\r\n.\r\n", b".\r\n", b""),
    (b"..x\r\n.\r\n", b".x\r\n", b""),
    (b"a\r\n..\r\n.\r\nQUIT\r\n", b"a\r\n.\r\n", b"QUIT\r\n"),
])
def test_ends_and_unstuffs(data: bytes, content: bytes, rest: bytes) -> None:
    got, ended, got_rest, d = decode([data])
    assert (got, ended, got_rest) == (content, True, rest)
    assert not d.bare_newline


@pytest.mark.parametrize("data", [
    b"a\n.\nMAIL FROM:<x@y>\r\n",          # bare LF dot bare LF
    b"a\r\n.\nMAIL FROM:<x@y>\r\n",        # CRLF dot LF
    b"a\n.\r\nMAIL FROM:<x@y>\r\n",        # LF dot CRLF
    b"a\r.\r\nMAIL FROM:<x@y>\r\n",        # bare CR dot CRLF
    b"a\r\n.\rMAIL FROM:<x@y>\r\n",        # CRLF dot CR
    b"a\r\r\n.\r\r\nMAIL FROM:<x@y>\r\n",  # CR CRLF dot CR CRLF
])
def test_smuggling_sequences_never_end_the_data(data: bytes) -> None:
    for chunks in ([data], [bytes([b]) for b in data]):
        _, ended, _, d = decode(chunks)
        assert not ended
        assert d.bare_newline


def test_normalize_mode_turns_bare_newlines_into_crlf_but_never_ends() -> None:
    got, ended, _, d = decode([b"a\nb\rc\r\n.\nstill data\r\n.\r\n"], normalize=True)
    assert ended
    assert got == b"a\r\nb\r\nc\r\n.\r\nstill data\r\n"


def test_line_length_limit_and_bounded_memory() -> None:
    d = DataDecoder()
    for _ in range(1000):
        d.feed(b"x" * 10_000)
        assert len(d._pending) <= MAX_TEXT_LINE  # noqa: SLF001 - the bound is the point
    r = d.feed(b"\r\n.\r\n")
    assert r.ended and d.line_too_long


def test_received_headers_counted_in_header_section_only() -> None:
    _, _, _, d = decode([b"Received: a\r\nreceived: b\r\n folded\r\n\r\nReceived: in body\r\n.\r\n"])
    assert d.received_count == 2


crlf_lines = st.lists(st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=30)


@given(crlf_lines, st.data())
@settings(max_examples=300)
def test_stuffed_content_roundtrips_in_any_chunking(lines: list[bytes], data: st.DataObject) -> None:
    message = b"".join(line + b"\r\n" for line in lines)
    wire = stuff(message) + b".\r\nAFTER"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)])]
    got, ended, _, d = decode(chunks)
    assert ended and got == message and not d.bare_newline
    # Nothing after the end marker is lost or taken as content, however the input is cut.
    assert after_end(chunks) == b"AFTER"


@pytest.mark.parametrize("chunks", [
    [b"a\r\n.\r\nAFTER"],
    [b"a\r\n.\r\n", b"AFTER"],
    [b"a\r\n.\r\nAF", b"TER"],
    [b"a\r\n.\r", b"\nAFTER"],
    [b"a\r\n", b".", b"\r", b"\n", b"A", b"FTER"],
])
def test_octets_after_the_end_come_back_whole(chunks: list[bytes]) -> None:
    assert after_end(chunks) == b"AFTER"


@given(st.binary(max_size=2000))
@settings(max_examples=500)
def test_no_end_without_crlf_dot_crlf(blob: bytes) -> None:
    """The data ends only at a CRLF.CRLF (or a leading .CRLF), never elsewhere; at the first
    one unless the line before it holds a bare CR (then that line end is no proper CRLF)."""
    framed = b"\r\n" + blob
    i = framed.find(b"\r\n.\r\n")
    got, ended, rest, _ = decode([blob])
    if i < 0:
        assert not ended
        return
    line_start = framed.rfind(b"\n", 0, i) + 1
    if b"\r" not in framed[line_start:i]:
        assert ended and rest == framed[i + 5:]
    elif ended:
        assert any(rest == framed[j + 5:] for j in range(i, len(framed))
                   if framed.startswith(b"\r\n.\r\n", j))


def test_a_bare_cr_before_the_crlf_keeps_the_dot_content() -> None:
    _, ended, _, d = decode([b"a\r\r\n.\r\nMAIL FROM:<x@y>\r\n"])
    assert not ended and d.bare_newline
