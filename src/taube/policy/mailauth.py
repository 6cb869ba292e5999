"""The mail authentication checks in the order they must run, built from ``[checks]``.

SPF decides at MAIL and RCPT; at the end of DATA DKIM and ARC verify, DMARC reads the SPF and
DKIM results, and the Authentication-Results check writes them all down (and marks forged
Authentication-Results for removal, which it does whatever is on). SPF and DKIM are evaluated
whenever DMARC is on, even when they are off themselves: DMARC cannot do without them (RFC 7489
section 4.2); the header then shows only the methods that are on.

The session must give the data_end checks ``ctx.tx.header`` (the header section as received)
and ``ctx.tx.message`` (the whole message, for signatures over the body), add
``ctx.tx.prepend`` above its Received, and leave out the octets of ``ctx.tx.drop``
(:func:`taube.policy.authresults.without`) when it stores the message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..lookup import DNSClient
from .arc import ARCCheck
from .authresults import AuthResultsCheck
from .dkim import DKIMCheck
from .dmarc import DMARCCheck
from .pipeline import Check
from .spf import SPFCheck

if TYPE_CHECKING:
    from ..config import ChecksSettings

__all__ = ["authentication_checks"]


def authentication_checks(checks: ChecksSettings, hostname: str, dns: DNSClient,
                          trusted: Callable[[str], bool]) -> list[Check]:
    """SPF, DKIM, ARC, DMARC (those that have something to do) and Authentication-Results, in
    this order, for a :class:`~taube.policy.pipeline.Pipeline`."""
    built: list[Check] = [
        SPFCheck(checks, hostname, dns, trusted),
        DKIMCheck(checks, dns, trusted),
        ARCCheck(checks, dns, trusted),
        DMARCCheck(checks, dns, trusted),
    ]
    return [c for c in built if getattr(c, "active", True)] + [
        AuthResultsCheck(checks, hostname, trusted)]
