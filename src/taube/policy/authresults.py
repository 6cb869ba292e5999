"""The Authentication-Results header field (RFC 8601) as a :class:`~taube.policy.pipeline.Check`
at the end of DATA, after the SPF, DKIM, ARC and DMARC checks.

**Our results.** For a client outside trusted_networks that has not authenticated, one field
is added above taube's Received (``ctx.tx.prepend``), with the ``hostname`` setting as the
authserv-id (section 2.5) and one clause per method that is on, in the order spf, dkim (one
per signature, or ``dkim=none``), arc, dmarc::

    Authentication-Results: mail.example.net;
        spf=pass smtp.mailfrom=example.org;
        dkim=pass header.d=example.org header.s=sel header.a=rsa-sha256;
        arc=none smtp.remote-ip=192.0.2.1;
        dmarc=pass (p=reject dis=none) header.from=example.org

It is built with ``authres`` from each method's typed result in ``ctx.tx.auth`` (their
``authres()``), folded before each clause. Property values are written only when they are
plain tokens (domains, selectors), so nothing from the message can add a clause of its own.
Methods that are off are left out; with all of them off nothing is added.

**Forged results.** A field that claims our authserv-id and comes from outside says something
we never said: section 5 asks that it be removed before delivery. Every Authentication-Results
field of the header section whose authserv-id (after any comment, quoted or not, before the
first ``;``, ``/`` or white space) equals ``hostname`` in any case, also in a field that is
otherwise malformed, is listed in ``ctx.tx.drop`` as its ``(start, end)`` octets in
``ctx.tx.header``, line ends and continuation lines included; :func:`without` removes them.
Only Authentication-Results: ARC-Authentication-Results belong to the ARC sets that sign them.
This is done for every client outside trusted_networks, authenticated users included (a user
could otherwise deliver a "dkim=pass" in our name to a local mailbox).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import authres

from .authcommon import exempt, header_fields, release_message, unfold
from .pipeline import CONTINUE, Check, Context, Verdict

if TYPE_CHECKING:
    from ..config import ChecksSettings

__all__ = ["METHODS", "AuthResultsCheck", "authserv_id", "build", "forged", "without"]

METHODS = ("spf", "dkim", "arc", "dmarc")
"""The methods in the order their clauses are written."""

_TOKEN = re.compile(r'[^\x00-\x20()<>@,;:\\"/\[\]?=\x7f]+')  # RFC 2045 token (RFC 8601 value)


def _skip_cfws(text: str, pos: int) -> int:
    """Past white space and comments (RFC 5322 3.2.2: nested, with quoted pairs)."""
    depth = 0
    while pos < len(text):
        char = text[pos]
        if char == "\\" and depth:
            pos += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif not depth and not char.isspace():
            break
        pos += 1
    return pos


def authserv_id(value: bytes) -> str:
    """The authserv-id a field value starts with (RFC 8601 section 2.2), lower case, without a
    final dot; "" when there is none."""
    text = unfold(value).decode("utf-8", "replace")
    pos = _skip_cfws(text, 0)
    if text.startswith('"', pos):
        found = re.match(r'"((?:[^"\\]|\\.)*)', text[pos:])
        ident = re.sub(r"\\(.)", r"\1", found.group(1)) if found else ""
    else:
        token = _TOKEN.match(text, pos)
        ident = token.group(0) if token else ""
    return ident.strip().rstrip(".").lower()


def forged(header: bytes, hostname: str) -> list[tuple[int, int]]:
    """The octet ranges of the Authentication-Results fields in ``header`` that claim the
    authserv-id ``hostname`` (see the module docstring)."""
    if b"authentication-results" not in header.lower():  # most mail: no field to parse at all
        return []
    ours = hostname.strip().rstrip(".").lower()
    return [(f.start, f.end) for f in header_fields(header, ("Authentication-Results",))
            if authserv_id(f.value) == ours]


def without(data: bytes, ranges: Iterable[tuple[int, int]]) -> bytes:
    """``data`` (the header section, or the whole message it begins) without the octets of
    ``ranges`` (``ctx.tx.drop``); ranges outside ``data`` or overlapping an earlier one are
    taken only as far as they are new."""
    kept, pos = [], 0
    for start, end in sorted(ranges):
        start, end = max(start, pos), min(end, len(data))
        if start >= end:
            continue
        kept.append(data[pos:start])
        pos = end
    kept.append(data[pos:])
    return b"".join(kept)


def build(hostname: str, results: Sequence[Any]) -> bytes:
    """The folded header field line (CRLF at the end) for ``results``, authres result objects
    in the order given; b"" when there are none."""
    if not results:
        return b""
    header = authres.AuthenticationResultsHeader(authserv_id=hostname, results=list(results))
    # Clauses are separated by "; " and hold only tokens and fixed comments (no "; " inside):
    # fold before each one, so that every line stays short (RFC 5322 2.1.1).
    clauses = header.header_value().split("; ")
    text = f"{header.HEADER_FIELD_NAME}: " + ";\r\n\t".join(clauses) + "\r\n"
    return text.encode("ascii", "replace")


class AuthResultsCheck(Check):
    """The Authentication-Results field and the removal of forged ones (see the module
    docstring). Put it after the checks whose results it writes.

    Reads ``ctx.client_ip``, ``ctx.user``, ``ctx.tx.header`` and ``ctx.tx.auth`` ("spf": an
    SPFResult, "dkim": a tuple of DKIMResult, "arc": an ARCResult, "dmarc": a DMARCResult);
    writes ``ctx.tx.drop`` and appends the field to ``ctx.tx.prepend``."""

    name = "authresults"

    def __init__(self, checks: ChecksSettings, hostname: str,
                 trusted: Callable[[str], bool]) -> None:
        self.methods = tuple(m for m in METHODS if getattr(checks, m) != "off")
        self.hostname = hostname
        self.trusted = trusted

    def clauses(self, auth: dict[str, object]) -> list[Any]:
        """The authres results of the methods that are on and left a result."""
        out: list[Any] = []
        for method in self.methods:
            result = auth.get(method)
            if method == "dkim" and isinstance(result, tuple):
                out.extend(r.authres() for r in result)
                if not result:
                    out.append(authres.DKIMAuthenticationResult(result="none"))
            elif result is not None and hasattr(result, "authres"):
                out.append(result.authres())
        return out

    async def data_end(self, ctx: Context) -> Verdict:
        release_message(ctx)  # the last of the authentication checks
        if self.trusted(ctx.client_ip):
            return CONTINUE
        if ctx.tx.header:
            ctx.tx.drop.extend(forged(ctx.tx.header, self.hostname))
        if exempt(ctx, self.trusted):
            return CONTINUE
        line = build(self.hostname, self.clauses(ctx.tx.auth))
        if line:
            ctx.tx.prepend.append(line)
        return CONTINUE
