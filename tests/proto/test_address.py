"""RFC 5321 paths and parameters."""

from __future__ import annotations

import pytest

from taube.proto.address import AddressError, Path, parse_mail_argument, parse_path, split_params


@pytest.mark.parametrize(("text", "local", "domain"), [
    ("<user@Example.TEST>", "user", "example.test"),
    ("user@example.test", "user", "example.test"),
    ("<@relay.test,@other.test:user@example.test>", "user", "example.test"),
    ('<"john doe"@example.test>', "john doe", "example.test"),
    ('<"a@b"@example.test>', "a@b", "example.test"),
    ("<user%other.test@example.test>", "user%other.test", "example.test"),
    ("<a!b@example.test>", "a!b", "example.test"),
    ("<user@[192.0.2.1]>", "user", "[192.0.2.1]"),
    ("<user@[IPv6:::1]>", "user", "[IPv6:::1]"),
])
def test_valid(text: str, local: str, domain: str) -> None:
    p = parse_path(text)
    assert (p.local, p.domain) == (local, domain)


@pytest.mark.parametrize("text", [
    "<>", "<user>", "<@example.test>", "<user@>", "<us er@example.test>", "<user@exa_mple.test>",
    "<user@-bad.test>", "<a..b@example.test>", "<" + "a" * 65 + "@example.test>",
    "<user@" + "a" * 250 + ".test>", "<user@[999.1.1.1]>", "<jürgen@example.test>",
])
def test_invalid(text: str) -> None:
    with pytest.raises(AddressError):
        parse_path(text)


def test_null_and_postmaster() -> None:
    assert parse_path("<>", allow_null=True).is_null
    assert parse_path("<Postmaster>", allow_bare_postmaster=True) == Path("postmaster", "")


def test_utf8_needs_flag() -> None:
    assert parse_path("<jürgen@bücher.test>", utf8=True).domain == "bücher.test"


def test_str_roundtrip_quotes() -> None:
    assert str(parse_path('<"john \\"j\\" doe"@x.test>')) == '<"john \\"j\\" doe"@x.test>'


def test_mail_argument_and_params() -> None:
    assert parse_mail_argument("FROM:<a@b.c> SIZE=10 BODY=8BITMIME", "FROM") == ("<a@b.c>", "SIZE=10 BODY=8BITMIME")
    assert parse_mail_argument('from: <"x>y"@b.c>', "FROM") == ('<"x>y"@b.c>', "")
    assert split_params("size=10 smtputf8") == {"SIZE": "10", "SMTPUTF8": None}
    with pytest.raises(AddressError):
        split_params("SIZE=1 SIZE=2")
    with pytest.raises(AddressError):
        parse_mail_argument("TO:<a@b.c>", "FROM")
