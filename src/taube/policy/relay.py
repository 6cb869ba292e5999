"""Who may relay: RFC 5321 3.6.2 leaves it to the site; an open relay is never acceptable.

Mail for local domains is taken from anyone. Mail for other domains only from clients in
``trusted_networks`` (later also authenticated clients). The decision is made on the recipient
as resolved by the directory, so address tricks (``user%other@local``, source routes, bang paths,
quoted local parts) can only ever reach a local lookup, never a remote destination.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["RelayPolicy", "client_address"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_address(client_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's address as every policy sees it: without an IPv6 scope (``%eth0``), and
    ``::ffff:192.0.2.1`` as 192.0.2.1; None for a string that is no address."""
    try:
        ip = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class RelayPolicy:
    def __init__(self, trusted_networks: Iterable[Network]) -> None:
        self._networks = tuple(trusted_networks)
        # Answers by address string: several checks ask for each message, and parsing the
        # address costs more than the rest of the answer. Bounded; a reload makes a new policy.
        self._trusted: dict[str, bool] = {}

    def is_trusted(self, client_ip: str) -> bool:
        trusted = self._trusted.get(client_ip)
        if trusted is None:
            ip = client_address(client_ip)
            trusted = ip is not None and any(ip in net for net in self._networks)
            if len(self._trusted) >= 4096:
                self._trusted.clear()
            self._trusted[client_ip] = trusted
        return trusted

    def may_relay(self, client_ip: str, *, authenticated: bool = False) -> bool:
        return authenticated or self.is_trusted(client_ip)
