"""RFC 5321 paths and ESMTP parameters (sections 4.1.2, 4.1.1.2, 4.1.1.3, 4.5.3.1), and the
xtext encoding of RFC 3461 section 4 that the DSN parameters use.

``MAIL FROM:<path> params`` and ``RCPT TO:<path> params`` are parsed here into a :class:`Path`
and a parameter dict. Source routes (``<@a,@b:user@c>``) are accepted and ignored as RFC 5321
4.1.1.3 and appendix C require; the local part is kept verbatim (quoted strings unquoted), so
``user%other@local`` or ``"a@b"@local`` are just unusual local parts and never routing
instructions.

The parameters are checked here too (:func:`parse_mail_params`, :func:`parse_rcpt_params`): each
keyword known or refused, each value within its RFC's syntax and length, and the first wrong one
answered with its reply, so the engine only routes the outcome.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from . import replies as R
from .common import ascii_upper
from .replies import Reply

__all__ = [
    "AddressError",
    "MailOptions",
    "Path",
    "is_domain",
    "parse_mail_argument",
    "parse_mail_params",
    "parse_path",
    "parse_rcpt_params",
    "split_params",
    "xtext_decode",
    "xtext_encode",
]

MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
MAX_DOMAIN = 255  # 4.5.3.1.2
MAX_PATH = 256  # 4.5.3.1.3, angle brackets included

# Atext of RFC 5322 3.2.3; with SMTPUTF8 (RFC 6531 3.3) any non-ASCII UTF-8 character as well.
_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~"
_DOT_STRING = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
_DOT_STRING_UTF8 = re.compile(rf"[{_ATEXT}\u0080-\U0010ffff]+(?:\.[{_ATEXT}\u0080-\U0010ffff]+)*")
# Quoted-string: qtextSMTP is %d32-33 / %d35-91 / %d93-126; quoted-pairSMTP is "\" %d32-126.
_QUOTED = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*)"')
_QUOTED_UTF8 = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*)"')
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_LABEL_UTF8 = r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]*[A-Za-z0-9\u0080-\U0010ffff])?"
_DOMAIN_UTF8 = re.compile(rf"{_LABEL_UTF8}(?:\.{_LABEL_UTF8})*")
_IPV4 = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}"
_ADDRESS_LITERAL = re.compile(rf"\[(?:{_IPV4}|IPv6:[0-9A-Fa-f:.]+|[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+)\]")
_ROUTE = re.compile(rf"@{_LABEL}(?:\.{_LABEL})*(?:,@{_LABEL}(?:\.{_LABEL})*)*:")
_PARAM = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e]+))?")
# RFC 3461 section 4: xchar is "!".."~" except "+" and "="; hexchar is "+" and two upper-case
# hex digits.
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
_XTEXT_HEX = re.compile(r"\+([0-9A-F]{2})")


class AddressError(ValueError):
    """The path does not follow RFC 5321 4.1.2; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Path:
    """A forward- or reverse-path. The null path ``<>`` has ``local == domain == ""``."""

    local: str
    domain: str
    quoted: bool = False

    @property
    def is_null(self) -> bool:
        return not self.local and not self.domain

    @property
    def address(self) -> str:
        """``local@domain`` with the local part as given (unquoted), or ``""`` for ``<>``."""
        if self.is_null:
            return ""
        return f"{self.local}@{self.domain}" if self.domain else self.local

    def __str__(self) -> str:
        if self.is_null:
            return "<>"
        local = self.local
        if self.quoted:
            local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"<{local}@{self.domain}>" if self.domain else f"<{local}>"


def parse_path(text: str, *, utf8: bool = False, allow_null: bool = False,
               allow_bare_postmaster: bool = False) -> Path:
    """Parse ``<local@domain>`` (brackets optional, as Postfix accepts by default)."""
    if len(text.encode("utf-8")) > MAX_PATH:
        raise AddressError("address too long")
    inner = text[1:-1] if text.startswith("<") and text.endswith(">") else text
    if not inner:
        if allow_null and text == "<>":
            return Path("", "")
        raise AddressError("empty address")
    route = _ROUTE.match(inner)
    if route:
        inner = inner[route.end():]  # RFC 5321 4.1.1.3: source routes MUST be accepted, SHOULD be ignored
    if allow_bare_postmaster and inner.lower() == "postmaster":
        return Path("postmaster", "")
    at = inner.rfind("@")
    if at <= 0:
        raise AddressError("address must be local-part@domain")
    local_text, domain = inner[:at], inner[at + 1:]
    local, quoted = _parse_local(local_text, utf8)
    _check_domain(domain, utf8)
    if domain.isascii() and not domain.startswith("["):
        domain = domain.lower()
    return Path(local, domain, quoted)


def _parse_local(text: str, utf8: bool) -> tuple[str, bool]:
    if not utf8 and not text.isascii():
        raise AddressError("non-ASCII address requires SMTPUTF8")
    if len(text.encode("utf-8")) > MAX_LOCAL_PART:
        raise AddressError("local part too long")
    if (_DOT_STRING_UTF8 if utf8 else _DOT_STRING).fullmatch(text):
        return text, False
    m = (_QUOTED_UTF8 if utf8 else _QUOTED).fullmatch(text)
    if m:
        return re.sub(r"\\(.)", r"\1", m.group(1)), True
    raise AddressError("bad local part")


def _check_domain(domain: str, utf8: bool) -> None:
    if not domain:
        raise AddressError("missing domain")
    if not utf8 and not domain.isascii():
        raise AddressError("non-ASCII domain requires SMTPUTF8")
    if len(domain.encode("utf-8")) > MAX_DOMAIN:
        raise AddressError("domain too long")
    if domain.startswith("["):
        if not _ADDRESS_LITERAL.fullmatch(domain):
            raise AddressError("bad address literal")
        return
    if not (_DOMAIN_UTF8 if utf8 else _DOMAIN).fullmatch(domain):
        raise AddressError("bad domain")


def is_domain(text: str) -> bool:
    """``text`` is an ASCII domain name (RFC 5321 4.1.2 Domain, no address literal) of at most
    255 octets."""
    return len(text) <= MAX_DOMAIN and text.isascii() and _DOMAIN.fullmatch(text) is not None


def xtext_decode(text: str) -> str:
    """Decode RFC 3461 section 4 xtext: ``"QQ+2Bxyz"`` -> ``"QQ+xyz"``.

    The hexchars stand for octets, read as UTF-8. Raises AddressError for a character outside
    xchar, a ``+`` without two upper-case hex digits, or octets that are not UTF-8.
    """
    if not _XTEXT.fullmatch(text):
        raise AddressError("bad xtext (RFC 3461 section 4)")
    raw = _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), text)
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        raise AddressError("xtext is not UTF-8") from None


def xtext_encode(text: str) -> str:
    """Encode ``text`` as RFC 3461 section 4 xtext: every octet of its UTF-8 form outside xchar
    (and ``+``, ``=``) becomes ``+XX``."""
    out = []
    for octet in text.encode("utf-8"):
        if 0x21 <= octet <= 0x7E and octet not in (0x2B, 0x3D):
            out.append(chr(octet))
        else:
            out.append(f"+{octet:02X}")
    return "".join(out)


def split_params(text: str) -> dict[str, str | None]:
    """``SIZE=1000 BODY=8BITMIME SMTPUTF8`` -> ``{"SIZE": "1000", ...}`` (RFC 5321 4.1.2
    esmtp-param; keywords are case-insensitive). Raises AddressError on bad syntax."""
    params: dict[str, str | None] = {}
    for word in text.split():
        m = _PARAM.fullmatch(word)
        if not m:
            raise AddressError(f"bad parameter {word[:40]!r}")
        key = m.group(1).upper()
        if key in params:
            raise AddressError(f"duplicate parameter {key}")
        params[key] = m.group(2)
    return params


def parse_mail_argument(arg: str, keyword: str) -> tuple[str, str]:
    """Split ``FROM:<path> params`` into the path text and the parameter text.

    ``keyword`` is ``"FROM"`` or ``"TO"``. A space after the colon is tolerated (common in the
    wild and in the seeds' examples); the path ends at the first ``>`` outside a quoted string,
    or at the first space for a path given without brackets.
    """
    head = keyword + ":"
    if ascii_upper(arg[: len(head)]) != head:
        raise AddressError(f"expected {head}")
    rest = arg[len(head):].lstrip(" ")
    if not rest:
        raise AddressError("missing address")
    if rest.startswith("<"):
        end = _closing_bracket(rest)
        return rest[: end + 1], rest[end + 1:].strip(" ")
    path, _, params = rest.partition(" ")
    return path, params.strip(" ")


def _closing_bracket(text: str) -> int:
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            return i
    raise AddressError("missing '>'")


# --- ESMTP parameters of MAIL and RCPT ----------------------------------------------------
# RFC 3461 4.1: the NOTIFY keywords, in the order a NOTIFY tuple lists them.
NOTIFY_KEYWORDS: Final = ("SUCCESS", "FAILURE", "DELAY")
ENVID_MAX: Final = 100  # RFC 3461 4.4: characters of the xtext as sent
ORCPT_MAX: Final = 500  # RFC 3461 4.2: characters of the parameter value as sent


@dataclass(slots=True, kw_only=True)
class MailOptions:
    """What the MAIL parameters said, once checked."""

    size: int | None = None
    body: str | None = None
    smtputf8: bool = False
    ret: str | None = None
    envid: str | None = None


def printable_xtext(value: str | None, limit: int) -> str | None:
    """Decode an xtext of at most ``limit`` characters whose decoded form is printable US-ASCII
    (RFC 3461 4.2 and 4.4); None when it is anything else."""
    if not value or len(value) > limit:
        return None
    try:
        decoded = xtext_decode(value)
    except AddressError:
        return None
    return decoded if decoded.isascii() and decoded.isprintable() else None


def parse_notify(value: str | None) -> tuple[str, ...] | None:
    """RFC 3461 4.1: ``NEVER`` alone, or a comma list of SUCCESS, FAILURE, DELAY (any case,
    each once). None when malformed."""
    if not value:
        return None
    words = ascii_upper(value).split(",")
    if words == ["NEVER"]:
        return ("NEVER",)
    if len(set(words)) != len(words) or not set(words) <= set(NOTIFY_KEYWORDS):
        return None
    return tuple(k for k in NOTIFY_KEYWORDS if k in words)


_ADDR_TYPE: Final = re.compile(r"[A-Za-z0-9!#$%&'*+\-/?^_`{|}~]+")  # RFC 3461 4.2: an atom


def parse_orcpt(value: str | None) -> str | None:
    """RFC 3461 4.2: ``addr-type;xtext``, at most 500 characters, decoded to printable ASCII:
    ``rfc822;bob+2Bx@example.org`` -> ``rfc822;bob+x@example.org``. None when malformed."""
    if not value or len(value) > ORCPT_MAX:
        return None
    addr_type, semicolon, xtext = value.partition(";")
    if not semicolon or not _ADDR_TYPE.fullmatch(addr_type):
        return None
    address = printable_xtext(xtext, ORCPT_MAX)
    return None if address is None else f"{addr_type};{address}"


def parse_mail_params(params: dict[str, str | None], *, max_message_size: int,
                      auth: bool) -> Reply | MailOptions:
    """Check the ESMTP parameters of MAIL (RFC 1870 SIZE, RFC 1652 BODY, RFC 6531 SMTPUTF8,
    RFC 4954 AUTH when ``auth`` is offered, RFC 3461 RET and ENVID): the options, or the reply
    for the first one that is wrong or unknown."""
    options = MailOptions()
    for key, value in params.items():
        if key == "SIZE":
            if value is None or not value.isdigit() or len(value) > 20:
                return R.syntax("SIZE=<octets> (RFC 1870)")
            options.size = int(value)
            if options.size > max_message_size:
                return R.MESSAGE_TOO_BIG
        elif key == "BODY":
            if value is None or ascii_upper(value) not in ("7BIT", "8BITMIME"):
                return R.syntax("BODY=7BIT|8BITMIME (RFC 1652)")
            options.body = value.upper()
        elif key == "SMTPUTF8":
            if value is not None:
                return R.syntax("SMTPUTF8 takes no value (RFC 6531)")
            options.smtputf8 = True
        elif key == "AUTH" and auth:
            if value is None:  # RFC 4954 5: AUTH=<> or AUTH=xtext; noted, not trusted
                return R.syntax("AUTH=<mailbox> (RFC 4954)")
        elif key == "RET":
            if value is None or ascii_upper(value) not in ("FULL", "HDRS"):
                return R.BAD_RET
            options.ret = value.upper()
        elif key == "ENVID":
            envid = printable_xtext(value, ENVID_MAX)
            if envid is None:
                return R.BAD_ENVID
            options.envid = envid
        else:
            return R.UNSUPPORTED_PARAMETER
    return options


def parse_rcpt_params(params: dict[str, str | None]) -> Reply | tuple[tuple[str, ...] | None, str | None]:
    """Check the ESMTP parameters of RCPT (RFC 3461 NOTIFY and ORCPT): ``(notify, orcpt)``, or
    the reply for the first one that is wrong or unknown."""
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None
    for key, value in params.items():
        if key == "NOTIFY":
            notify = parse_notify(value)
            if notify is None:
                return R.BAD_NOTIFY
        elif key == "ORCPT":
            orcpt = parse_orcpt(value)
            if orcpt is None:
                return R.BAD_ORCPT
        else:
            return R.UNSUPPORTED_PARAMETER
    return notify, orcpt
