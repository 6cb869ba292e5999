"""The site's own rules, as a :class:`~taube.policy.pipeline.Check`: who may send as whom, which
recipients are taken (local users, postmaster, relaying), and who may use VRFY, EXPN and ETRN.

Every directory lookup runs in a worker thread: the directory is SQLite, and a lookup that
waits on its lock or the disk must not stall the other connections. The threads are this
module's own (:data:`LOOKUPS`), not the loop's default pool, whose threads may all be waiting
on commits' fsyncs under load: a RCPT is never queued behind them.

What a lookup found is kept for :data:`ANSWER_TTL` seconds (:class:`Answers`) and answered on
the event loop: a burst of mail for one recipient costs one directory read per interval instead
of a thread hop per RCPT (the hop costs more CPU than the read, and hands the interpreter lock
back and forth with the commit threads). "Unknown user" is never kept, so a user or alias
added with the command line is found by the next RCPT; one removed stops receiving within
:data:`ANSWER_TTL`, as does a domain's change between local and remote; a SIGHUP, which
builds new checks, forgets every answer at once. A sender check (``sender_login_match``) keeps
only the answer that the user owns the address.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from ..directory.base import Directory
from ..directory.resolve import Resolution, resolve_recipient
from ..proto import replies as R
from ..proto.address import AddressError, parse_path
from ..proto.replies import Reply
from .pipeline import Check, Context, Verdict
from .relay import RelayPolicy

if TYPE_CHECKING:
    from ..config import Settings
    from ..sharedstate import SharedState

__all__ = ["ANSWER_TTL", "Answers", "LocalPolicy", "LocalRules", "owns_sender", "postmaster_for"]

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
# Directory lookups of the SMTP sessions (see the module docstring): quick SQLite reads, a few
# threads suffice; they never wait behind the commit threads' fsyncs.
LOOKUPS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="taube-lookup")
# Seconds a directory answer is reused (see the module docstring): long enough
# that a busy recipient is read about once per interval, short enough that a removed user is
# soon refused.
ANSWER_TTL = 2.0
# Answers kept at most; a full table forgets its expired answers, or all of them.
ANSWERS_MAX = 4096


class Answers(Generic[K, T]):
    """Directory answers by key, each for ``ttl`` seconds of ``clock``; at most ``limit``."""

    def __init__(self, ttl: float = ANSWER_TTL, limit: int = ANSWERS_MAX,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.limit = limit
        self.clock = clock
        self._answers: dict[K, tuple[float, T]] = {}

    def get(self, key: K) -> T | None:
        kept = self._answers.get(key)
        if kept is None:
            return None
        if kept[0] <= self.clock():
            del self._answers[key]
            return None
        return kept[1]

    def put(self, key: K, answer: T) -> None:
        now = self.clock()
        if len(self._answers) >= self.limit:
            self._answers = {k: v for k, v in self._answers.items() if v[0] > now}
            if len(self._answers) >= self.limit:  # all fresh: a flood of distinct addresses
                self._answers.clear()
        self._answers[key] = (now + self.ttl, answer)

    def __len__(self) -> int:
        return len(self._answers)


class _PostmasterSettings(Protocol):
    postmaster: str
    domains: Sequence[str]
    hostname: str


def postmaster_for(settings: _PostmasterSettings, directory: Directory) -> str:
    """Where postmaster mail goes: the ``postmaster`` setting, a bare local part taken in the
    first local domain."""
    pm = settings.postmaster
    if "@" in pm:
        return pm
    domains = settings.domains or directory.list_domains()
    return f"{pm}@{domains[0] if domains else settings.hostname}"


def owns_sender(directory: Directory, user: str, sender: str) -> bool:
    """The sender is the user's own address or an alias that leads to the user."""
    sender, user = sender.lower(), user.lower()
    if sender == user:
        return True
    targets = directory.get_alias(sender) or []
    return user in (t.lower() for t in targets)


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalRules:
    """The slice of the settings these rules read."""

    hostname: str
    domains: tuple[str, ...] = ()
    postmaster: str = "postmaster"
    sender_login_match: bool = True  # [auth]
    smtp_after_pop: float = 0.0  # [auth], seconds; 0: off
    vrfy: str = "ambiguous"  # [smtp] "ambiguous", "local", "off"
    expn: str = "off"  # [smtp] "off", "aliases"
    etrn: str = "trusted"  # [smtp] "trusted", "anyone", "off"

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalRules:
        return cls(hostname=settings.hostname, domains=tuple(settings.domains),
                   postmaster=settings.postmaster,
                   sender_login_match=settings.auth.sender_login_match,
                   smtp_after_pop=settings.auth.smtp_after_pop, vrfy=settings.smtp.vrfy,
                   expn=settings.smtp.expn, etrn=settings.smtp.etrn)


class LocalPolicy(Check):
    """MAIL: an authenticated client sends as itself (``sender_login_match``). RCPT: local users
    and aliases, postmaster (RFC 5321 4.5.1), other domains only from trusted networks,
    authenticated clients and SMTP-after-POP. VRFY/EXPN/ETRN: as configured."""

    name = "local"

    def __init__(self, rules: LocalRules, directory: Directory, relay: RelayPolicy,
                 state: SharedState | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = rules
        self.directory = directory
        self.relay = relay
        self.state = state
        # Answers given on the loop for a while (see the module docstring).
        self.resolved: Answers[tuple[str, str, str], tuple[str, Resolution]] = Answers(clock=clock)
        self.owned: Answers[tuple[str, str], bool] = Answers(clock=clock)

    async def _lookup(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(LOOKUPS, fn, *args)

    def postmaster(self) -> str:
        return postmaster_for(self.rules, self.directory)

    # --- MAIL ------------------------------------------------------------------------------
    async def mail(self, ctx: Context) -> Verdict:
        user, sender = ctx.user, ctx.tx.sender
        if (user is not None and sender and self.rules.sender_login_match
                and not await self._owns(user, sender)):
            return Verdict.reject(
                Reply(code=553, enhanced="5.7.1",
                      text=f"<{sender}>: Sender address rejected: not owned by user {user}"),
                "sender login mismatch")
        return Verdict.cont()

    async def _owns(self, user: str, sender: str) -> bool:
        key = (user, sender)
        if self.owned.get(key):
            return True
        owned = await self._lookup(owns_sender, self.directory, user, sender)
        if owned:
            self.owned.put(key, True)
        return owned

    # --- RCPT ------------------------------------------------------------------------------
    async def rcpt(self, ctx: Context) -> Verdict:
        rcpt = ctx.tx.rcpt
        assert rcpt is not None
        address, resolved = await self._resolution(rcpt.address, rcpt.local, rcpt.domain)
        if resolved.status == "unknown_user":
            return Verdict.reject(
                Reply(code=550, enhanced="5.1.1", text=f"<{address}>: Recipient address rejected: "
                      "User unknown in local recipient table"), "unknown user")
        authenticated = ctx.user is not None or self._pop_before_smtp(ctx.client_ip)
        if resolved.status == "remote" and not self.relay.may_relay(ctx.client_ip,
                                                                     authenticated=authenticated):
            return Verdict.reject(Reply(code=554, enhanced="5.7.1", text=f"<{address}>: Relay access denied"),
                                  f"relay to {rcpt.domain} from untrusted client")
        rcpt.address, rcpt.targets = address, list(resolved.targets)
        return Verdict.cont()

    async def _resolution(self, address: str, local: str, domain: str) -> tuple[str, Resolution]:
        """:meth:`_resolve`, from :attr:`resolved` when it is there; an unknown user is always
        looked up again, so that one added meanwhile is found."""
        key = (address, local, domain)
        answer = self.resolved.get(key)
        if answer is None:
            answer = await self._lookup(self._resolve, address, local, domain)
            if answer[1].status != "unknown_user":
                self.resolved.put(key, answer)
        return answer

    def _resolve(self, address: str, local: str, domain: str) -> tuple[str, Resolution]:
        """(blocking) The address as replies show it, and where it leads."""
        if not domain:  # RFC 5321 4.5.1: <postmaster> without domain must be accepted
            address = self.postmaster()
        resolution = resolve_recipient(self.directory, address)
        if resolution.status == "unknown_user" and local.lower() == "postmaster":
            # RFC 5321 4.5.1: postmaster@ every local domain, even without a user of that name
            resolution = resolve_recipient(self.directory, self.postmaster())
        return address, resolution

    def _pop_before_smtp(self, client_ip: str) -> bool:
        """SMTP-after-POP (legacy): a POP3 login from this address within the window."""
        window = self.rules.smtp_after_pop
        return (window > 0 and self.state is not None
                and self.state.pop_login_within(client_ip, window))

    # --- VRFY, EXPN, ETRN ------------------------------------------------------------------
    async def vrfy(self, ctx: Context) -> Verdict:
        mode = self.rules.vrfy
        if mode == "off":
            return Verdict.reject(R.VRFY_DISABLED)
        if mode == "ambiguous":
            return Verdict.cont(R.VRFY_AMBIGUOUS)  # RFC 5321 3.5.3: 252, no user enumeration
        address = _argument_address(ctx.argument)
        if address and await self._lookup(self.directory.user_exists, address):
            return Verdict.cont(Reply(code=250, enhanced="2.0.0", text=f"<{address}>"))
        return Verdict.reject(Reply(code=550, enhanced="5.1.1", text=f"<{ctx.argument}>: User unknown"))

    async def expn(self, ctx: Context) -> Verdict:
        if self.rules.expn == "off" or not self.relay.is_trusted(ctx.client_ip):
            return Verdict.reject(R.EXPN_DISABLED)
        address = _argument_address(ctx.argument)
        targets = await self._lookup(self.directory.get_alias, address) if address else None
        if not targets:
            return Verdict.reject(Reply(code=550, enhanced="5.1.1",
                                        text=f"<{ctx.argument}>: No such mailing list"))
        return Verdict.cont(Reply(code=250, enhanced="2.1.5", text=tuple(f"<{t}>" for t in targets)))

    async def etrn(self, ctx: Context) -> Verdict:
        """Whether this client may ask for a queue run (RFC 1985); running it is the session's."""
        if self.rules.etrn != "anyone" and not self.relay.is_trusted(ctx.client_ip):
            return Verdict.tempfail(R.etrn_not_allowed(ctx.argument, "ETRN is limited to trusted networks"),
                                  "ETRN is limited to trusted networks")
        return Verdict.cont()


def _argument_address(argument: str) -> str | None:
    try:
        return parse_path(argument.strip(), utf8=True).address.lower()
    except AddressError:
        return None
