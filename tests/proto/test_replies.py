"""Reply: the one type for the replies the server sends and the ones the delivery client reads."""

from __future__ import annotations

import dataclasses

import pytest

from taube.proto import replies as R
from taube.proto.replies import Reply


def test_fields_are_named_never_positional() -> None:
    with pytest.raises(TypeError):
        Reply(250, "2.0.0", "Ok")  # type: ignore[misc]
    reply = Reply(code=250, enhanced="2.0.0", text="Ok")
    assert reply == R.OK
    with pytest.raises(dataclasses.FrozenInstanceError):
        reply.code = 251  # type: ignore[misc]


def test_encode_puts_the_enhanced_code_on_every_line() -> None:
    reply = Reply(code=250, enhanced="2.1.5", text=("<a@x>", "<b@y>"))
    assert reply.encode() == b"250-2.1.5 <a@x>\r\n250 2.1.5 <b@y>\r\n"
    assert Reply(code=220, enhanced=None, text="mx ESMTP").encode() == b"220 mx ESMTP\r\n"
    assert str(reply) == "250 2.1.5 <a@x> / <b@y>"


def test_parse_reads_back_what_the_server_sends() -> None:
    sent = Reply(code=550, enhanced="5.1.1", text=("<x@y>: Recipient address rejected:", "User unknown"))
    message = "\n".join(line[4:] for line in sent.encode().decode().split("\r\n") if line)
    got = Reply.parse(550, message)
    assert got == Reply(code=550, enhanced="5.1.1", text="<x@y>: Recipient address rejected: User unknown")
    assert (got.ok, got.temporary, got.is_positive, got.status()) == (False, False, False, "5.1.1")
    assert got.diagnostic() == "smtp; 550 5.1.1 <x@y>: Recipient address rejected: User unknown"


@pytest.mark.parametrize(("reply", "status", "ok", "temporary", "positive"), [
    (Reply(code=250, enhanced=None, text="Ok"), "2.0.0", True, False, True),
    (Reply(code=451, enhanced=None, text="later"), "4.0.0", False, True, False),
    (Reply(code=554, enhanced=None, text="no"), "5.0.0", False, False, False),
    (R.TOO_MANY_RECIPIENTS, "4.5.3", False, True, False),
])
def test_status_falls_back_to_the_reply_class(reply: Reply, status: str, ok: bool, temporary: bool,
                                              positive: bool) -> None:
    assert (reply.status(), reply.ok, reply.temporary, reply.is_positive) == (status, ok, temporary, positive)
