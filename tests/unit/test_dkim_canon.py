"""The incremental relaxed body canonicalization (taube.signing.canon) against dkimpy's own, for
bodies of every shape cut into chunks at every place."""

from __future__ import annotations

import base64
import hashlib

import dkim
import pytest
from hypothesis import given
from hypothesis import strategies as st

from taube.signing.canon import RelaxedBodyHash, relaxed_body

RELAXED = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")


def dkimpy_body(body: bytes) -> bytes:
    """dkimpy's relaxed canonical body of a message with this body, as DKIM.sign computes it
    (its parser turns bare LF into CRLF). A last line without line end gets the CRLF that SMTP
    adds before the final dot (see taube.signing.canon)."""
    if body and not body.endswith(b"\n"):
        body += b"\r\n"
    _, parsed = dkim.rfc822_parse(b"Subject: x\r\n\r\n" + body)
    return RELAXED.canonicalize_body(parsed)


# Bodies built from the pieces the rules are about: whitespace runs, CR, LF, CRLF, empty lines.
PIECES = st.sampled_from([b"a", b"bc", b" ", b"\t", b"  \t ", b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"x \r\n",
                          b" \r", b"\r \n", b"\x00", b"\xff"])
BODIES = st.lists(PIECES, max_size=40).map(b"".join)


@given(body=BODIES, data=st.data())
def test_same_as_dkimpy_for_any_chunking(body: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=8)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    collected: list[bytes] = []

    class Sink:
        def update(self, part: bytes, /) -> None:
            collected.append(part)

        def digest(self) -> bytes:
            return b"".join(collected)

    state = RelaxedBodyHash(Sink())
    for chunk in chunks:
        state.update(chunk)
    assert state.digest() == dkimpy_body(body)


@given(body=BODIES)
def test_one_byte_at_a_time(body: bytes) -> None:
    assert relaxed_body(body, chunk=1) == dkimpy_body(body)


@pytest.mark.parametrize(("body", "canonical"), [
    (b"", b""),  # RFC 6376 3.4.4: an empty body stays empty (errata 3192)
    (b"\r\n\r\n\r\n", b""),
    (b"  \r\n\t\r\n", b""),
    (b"a  b\t\tc  \r\n", b"a b c\r\n"),
    (b" lead\r\n", b" lead\r\n"),
    (b"a\r\n\r\nb\r\n\r\n\r\n", b"a\r\n\r\nb\r\n"),
    (b"no end", b"no end\r\n"),
    (b"no end  \t", b"no end\r\n"),  # SMTP adds the CRLF: the whitespace is then trailing
    (b"cr\r", b"cr\r\r\n"),  # a CR not followed by LF is content
    (b"x \r\r\n", b"x \r\r\n"),
])
def test_rfc6376_examples(body: bytes, canonical: bytes) -> None:
    assert relaxed_body(body) == canonical
    assert relaxed_body(body, chunk=1) == canonical


def test_bh_is_base64_sha256_of_the_canonical_body() -> None:
    state = RelaxedBodyHash()
    state.update(b"Hi  there \r\n\r\n")
    assert state.bh() == base64.b64encode(hashlib.sha256(b"Hi there\r\n").digest())


def test_no_update_after_the_digest() -> None:
    state = RelaxedBodyHash()
    state.digest()
    with pytest.raises(ValueError):
        state.update(b"more")


def test_state_stays_small_for_a_long_line_of_spaces() -> None:
    """Whitespace at a chunk's end is held back as one SP, not as the run itself."""
    state = RelaxedBodyHash()
    for _ in range(64):
        state.update(b" " * 65536)
        assert len(state._carry) <= 2
    state.update(b"x\r\n")
    assert state.digest() == hashlib.sha256(b" x\r\n").digest()
