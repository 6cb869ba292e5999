"""Recipient resolution: one RCPT TO address -> the final destinations of its copies.

For an address in a local domain the look-up order is the one of Postfix's virtual alias maps:
the exact alias first, then a user, then the domain's catch-all alias ``@domain``; otherwise the
user is unknown. The same order applies to every alias target in a local domain, recursively
(:data:`MAX_DEPTH` levels). A target that leads back to an address being expanded ends there: it
is delivered if it is a user (``alice -> alice, alice@elsewhere`` keeps a copy), else dropped.
Targets in other domains are remote; unknown local targets are dropped. An address whose
expansion leaves nothing is an unknown user: refused, rather than accepted for nobody.

The address is taken literally. ``%``, ``!``, a ``@`` inside a quoted local part, or anything
else in the local part is looked up as it is and never turned into a route (RFC 5321 3.6.1 and
appendix C leave the interpretation of local parts to the final host; taube interprets nothing),
so ``user%other.example@local.test`` is an unknown user unless it exists verbatim.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from ..addressing import Target
from .base import Directory, normalize_address, split_address

__all__ = ["MAX_DEPTH", "Resolution", "resolve_recipient"]

log = logging.getLogger("taube.directory")

MAX_DEPTH = 10  # nested aliases; Postfix's virtual_alias_recursion_limit is 1000, 10 is plenty


@dataclass(frozen=True, slots=True)
class Resolution:
    """``ok`` with at least one target, ``unknown_user`` (a local domain, nobody to deliver to),
    or ``remote`` with one remote target (whether it may be relayed is decided elsewhere)."""

    status: Literal["ok", "unknown_user", "remote"]
    targets: tuple[Target, ...] = ()


def resolve_recipient(directory: Directory, address: str) -> Resolution:
    """Resolve ``address`` as given in RCPT TO; every target's ``original`` is ``address``."""
    local, domain = split_address(address)
    if not local or not domain:
        return Resolution("unknown_user")  # nothing to look up, nowhere to route it
    if not directory.is_local_domain(domain):
        return Resolution("remote", (Target(kind="remote", address=address, original=address),))
    expansion = _Expansion(directory, original=address)
    expansion.local(normalize_address(address), chain=())
    if not expansion.targets:
        return Resolution("unknown_user")
    return Resolution("ok", tuple(expansion.targets.values()))


@dataclass
class _Expansion:
    """Collects the targets of one address; duplicates are kept once, in first-seen order."""

    directory: Directory
    original: str
    targets: dict[tuple[str, str], Target] = field(default_factory=dict)

    def add(self, kind: Literal["local", "remote"], address: str) -> None:
        self.targets.setdefault((kind, address), Target(kind=kind, address=address, original=self.original))

    def local(self, address: str, chain: tuple[str, ...]) -> None:
        """Expand a normalised address of a local domain; ``chain`` holds the aliases that led
        here, outermost first."""
        if address in chain:
            if self.directory.user_exists(address):
                self.add("local", address)
            return
        if len(chain) > MAX_DEPTH:
            log.warning("alias expansion of <%s> deeper than %d levels at <%s>; that branch dropped",
                        self.original, MAX_DEPTH, address)
            return
        members = self.directory.get_alias(address)
        if members is None:
            if self.directory.user_exists(address):
                self.add("local", address)
                return
            members = self.directory.get_alias("@" + split_address(address)[1])
        for member in members or ():
            self.member(member, chain + (address,))

    def member(self, address: str, chain: tuple[str, ...]) -> None:
        """One alias target: expanded if local, kept as written if remote."""
        domain = split_address(address)[1]
        if self.directory.is_local_domain(domain):
            self.local(normalize_address(address), chain)
        else:
            self.add("remote", address)
