"""The inbound policy pipeline: the decisions an SMTP session asks for, one :class:`Check` after
the other, at each stage of the dialogue.

A check implements the stages it cares about (``connect``, ``helo``, ``mail``, ``rcpt``,
``data_end``; and for the commands that are rights rather than mail, ``vrfy``, ``expn``,
``etrn``) as coroutines, so a check that asks the DNS or a database never blocks the other
connections. Each stage gets the :class:`Context` of the connection, with the open
:class:`Transaction` in ``ctx.tx``, and returns a :class:`Verdict`:

* ``Verdict.cont()``: this check has no objection, the next one runs;
* ``Verdict.tempfail(reply, reason)``: a 4xx ``reply``, the stage ends here;
* ``Verdict.reject(reply, reason)``: a 5xx ``reply``, the stage ends here.

``reason`` is for the log, never for the client. A verdict may carry ``results`` (e.g.
``{"spf": "pass smtp.mailfrom=example.org"}``): those of every check that ran are collected,
per connection for ``connect``/``helo`` and per transaction for the other stages, for an
Authentication-Results header. A continue verdict may also carry a positive ``reply`` that
replaces the default one (VRFY's ``250 <address>``); the last such reply wins.

The pipeline knows nothing of sockets or of the SMTP engine: the session
(:mod:`taube.net.smtp_session`) fills the context and maps the verdict to the engine's
``accept()``/``reject()``. A future check plugs in like this::

    class DNSBL(Check):
        name = "dnsbl"

        async def connect(self, ctx):
            listed = await self.resolver.listed(ctx.client_ip)   # asynchronous DNS
            if listed:
                return Verdict.reject(Reply(code=554, enhanced="5.7.1", text=f"Service unavailable; "
                                            f"client [{ctx.client_ip}] blocked using {listed}"),
                                      reason=f"listed in {listed}")
            return Verdict.cont()

    pipeline = Pipeline([DNSBL(...), LocalPolicy(...)])
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from ..proto.replies import Reply, SMTPError

if TYPE_CHECKING:
    from ..addressing import Target

__all__ = ["STAGES", "Action", "Check", "Context", "Pipeline", "Recipient", "Stage", "Transaction",
           "Verdict"]

Action = Literal["continue", "tempfail", "reject"]
Stage = Literal["connect", "helo", "mail", "rcpt", "data_end", "vrfy", "expn", "etrn"]
STAGES: tuple[Stage, ...] = ("connect", "helo", "mail", "rcpt", "data_end", "vrfy", "expn", "etrn")
_NO_RESULTS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one check (or a whole stage) says."""

    action: Action = "continue"
    reply: Reply | None = None
    reason: str = ""
    results: Mapping[str, str] = field(default_factory=lambda: _NO_RESULTS)

    @classmethod
    def cont(cls, reply: Reply | None = None, *, results: Mapping[str, str] | None = None) -> Verdict:
        if reply is not None and not reply.is_positive:
            raise ValueError(f"a continue verdict takes a positive reply, got {reply.code}")
        return cls("continue", reply, "", _frozen(results))

    @classmethod
    def tempfail(cls, reply: Reply, reason: str = "", *,
                 results: Mapping[str, str] | None = None) -> Verdict:
        if not 400 <= reply.code < 500:
            raise ValueError(f"a tempfail verdict takes a 4xx reply, got {reply.code}")
        return cls("tempfail", reply, reason, _frozen(results))

    @classmethod
    def reject(cls, reply: Reply, reason: str = "", *,
               results: Mapping[str, str] | None = None) -> Verdict:
        if not 500 <= reply.code < 600:
            raise ValueError(f"a reject verdict takes a 5xx reply, got {reply.code}")
        return cls("reject", reply, reason, _frozen(results))

    @property
    def refused(self) -> bool:
        return self.action != "continue"

    def error(self) -> SMTPError:
        """The refusal as the session raises it (``reject client=... <reply> (<reason>)``)."""
        assert self.reply is not None and self.refused
        return SMTPError(self.reply, reason=self.reason)


def _frozen(results: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(results)) if results else _NO_RESULTS


CONTINUE = Verdict()


@dataclass(slots=True)
class Recipient:
    """An RCPT: ``address`` as given, ``local``/``domain`` of its path (``domain`` empty for
    ``<postmaster>``). A check that resolves it completes ``address`` and sets ``targets``:
    where the message goes for this recipient. Once accepted, its targets also carry the RCPT's
    RFC 3461 NOTIFY and ORCPT."""

    address: str
    local: str
    domain: str
    targets: list[Target] = field(default_factory=list)


@dataclass(slots=True)
class Transaction:
    """One mail transaction, from MAIL to the final reply, RSET or HELO/EHLO: the one record of
    it. The checks read it and add to it (``prepend``, ``results``); the session fills in what
    the client said and, at the end of DATA, builds the envelope from it."""

    sender: str | None = None  # "" for <>; None before MAIL was accepted
    # MAIL's ESMTP parameters as the envelope keeps them: as given, except RET in upper case and
    # ENVID decoded from xtext (RFC 3461 4.3, 4.4); a parameter without value maps to "".
    mail_params: Mapping[str, str] = field(default_factory=dict)
    size: int | None = None  # MAIL SIZE= (RFC 1870)
    recipients: list[Recipient] = field(default_factory=list)  # the accepted RCPTs, in order
    rcpt: Recipient | None = None  # the one being decided (rcpt stage)
    queue_id: str = ""  # given when DATA is accepted
    received_at: float = 0.0  # when DATA was accepted (the date of the Received header)
    header: bytes | None = None  # the message's header section (data_end stage)
    # Complete CRLF header lines a data_end check adds (Authentication-Results, DKIM-Signature):
    # stored above taube's Received, in this order.
    prepend: list[bytes] = field(default_factory=list)
    results: dict[str, str] = field(default_factory=dict)
    # Mail authentication (data_end): the whole message as received, header section and body,
    # for the checks that verify signatures over it (DKIM, ARC); set by the session.
    message: Callable[[], Awaitable[bytes]] | None = None
    # Each authentication method's typed result by its name ("spf", "dkim", "arc", "dmarc"),
    # for the checks after it and the Authentication-Results header.
    auth: dict[str, object] = field(default_factory=dict)
    # Header fields to leave out when the message is stored, as (start, end) octet offsets into
    # ``header`` (forged Authentication-Results, RFC 8601 section 5).
    drop: list[tuple[int, int]] = field(default_factory=list)

    @property
    def smtputf8(self) -> bool:
        """MAIL said SMTPUTF8 (RFC 6531): the addresses may be UTF-8."""
        return "SMTPUTF8" in self.mail_params

    @property
    def targets(self) -> tuple[Target, ...]:
        """Where the message goes: the accepted recipients' targets, one per final destination
        even when two RCPTs (or aliases) lead to it."""
        seen: set[tuple[str, str]] = set()
        out = []
        for target in (t for r in self.recipients for t in r.targets):
            key = (target.kind, target.address)
            if key not in seen:
                seen.add(key)
                out.append(target)
        return tuple(out)


@dataclass(slots=True)
class Context:
    """One connection as the checks see it; the session keeps it current."""

    client_ip: str
    mode: str = "smtp"  # "smtp", "submission" or "smtps"
    helo: str | None = None
    esmtp: bool = False
    tls: bool = False
    tls_info: str | None = None  # "using TLSv1.3 with cipher ..." when TLS is active
    user: str | None = None  # the SMTP AUTH identity
    argument: str = ""  # the VRFY/EXPN argument, the ETRN node
    results: dict[str, str] = field(default_factory=dict)  # connect and helo results
    # Facts a check keeps for the whole connection, for its own later stages and for other
    # checks, by a key its module names (the DNS list look-up started at connect, read at RCPT
    # by the DNSBL and greylisting checks).
    notes: dict[str, object] = field(default_factory=dict)
    tx: Transaction = field(default_factory=Transaction)

    def new_transaction(self) -> Transaction:
        self.tx = Transaction()
        return self.tx

    def all_results(self) -> dict[str, str]:
        """Connection and transaction results together (for Authentication-Results)."""
        return {**self.results, **self.tx.results}


class Check:
    """Base of the checks: every stage continues unless a subclass says otherwise. ``name``
    identifies the check in logs and results."""

    name: str = "check"

    async def connect(self, ctx: Context) -> Verdict:
        return CONTINUE

    async def helo(self, ctx: Context) -> Verdict:
        return CONTINUE

    async def mail(self, ctx: Context) -> Verdict:
        return CONTINUE

    async def rcpt(self, ctx: Context) -> Verdict:
        return CONTINUE

    async def data_end(self, ctx: Context) -> Verdict:
        return CONTINUE

    async def vrfy(self, ctx: Context) -> Verdict:
        return CONTINUE

    async def expn(self, ctx: Context) -> Verdict:
        return CONTINUE

    async def etrn(self, ctx: Context) -> Verdict:
        return CONTINUE


class Pipeline:
    """The checks in order. At each stage the first check that does not continue ends it; its
    verdict is the stage's. Otherwise the stage continues, with the positive reply of the last
    check that gave one. Results of every check that ran are kept in the context."""

    def __init__(self, checks: Iterable[Check] = ()) -> None:
        self.checks: Sequence[Check] = tuple(checks)
        # Only checks that override a stage are called for it.
        self._by_stage = {stage: tuple(c for c in self.checks if _implements(c, stage))
                          for stage in STAGES}

    def implements(self, stage: Stage) -> bool:
        """Whether any check cares about ``stage`` (the session keeps the header section for
        ``data_end`` only then)."""
        return bool(self._by_stage[stage])

    async def run(self, stage: Stage, ctx: Context) -> Verdict:
        results = ctx.results if stage in ("connect", "helo") else ctx.tx.results
        reply: Reply | None = None
        for check in self._by_stage[stage]:
            verdict: Verdict = await getattr(check, stage)(ctx)
            results.update(verdict.results)
            if verdict.refused:
                return verdict
            reply = verdict.reply or reply
        return Verdict.cont(reply) if reply is not None else CONTINUE

    async def connect(self, ctx: Context) -> Verdict:
        return await self.run("connect", ctx)

    async def helo(self, ctx: Context) -> Verdict:
        return await self.run("helo", ctx)

    async def mail(self, ctx: Context) -> Verdict:
        return await self.run("mail", ctx)

    async def rcpt(self, ctx: Context) -> Verdict:
        return await self.run("rcpt", ctx)

    async def data_end(self, ctx: Context) -> Verdict:
        return await self.run("data_end", ctx)

    async def vrfy(self, ctx: Context) -> Verdict:
        return await self.run("vrfy", ctx)

    async def expn(self, ctx: Context) -> Verdict:
        return await self.run("expn", ctx)

    async def etrn(self, ctx: Context) -> Verdict:
        return await self.run("etrn", ctx)


def _implements(check: Check, stage: Stage) -> bool:
    method = getattr(type(check), stage, None)
    return method is not None and method is not getattr(Check, stage, None)
