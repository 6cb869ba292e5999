"""Where mail for a domain goes, and which hosts to try there.

The ``[delivery.transport]`` table first (the domain, then ``.parent`` entries for its
subdomains), then the ``relayhost``, else the domain's MX records (RFC 5321 5.1). A next hop in
brackets or an IP address is contacted directly; a bare name is a mail domain whose MX records
are looked up, as in Postfix. Mail must never come back to this server: when it is one of the
MX hosts only the more preferred ones may be used (RFC 5321 5.1), and with none left the mail
bounces with 5.4.6 (routing loop, RFC 3463 3.5).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Literal

from ..config import ConfigError, Settings, parse_listen, parse_next_hop
from .dns import DNSFailure, MXHost, Resolver, is_ip_literal
from .outcome import RouteFailure

__all__ = ["Route", "Router", "recipient_domain"]

log = logging.getLogger("taube.delivery")


@dataclass(frozen=True, slots=True)
class Route:
    """Where mail for a domain goes. ``key`` names the destination (concurrency, logs)."""

    key: str
    host: str
    port: int
    mx: bool  # look up MX records of ``host`` (a mail domain); else contact ``host`` itself
    tls: Literal["none", "may", "encrypt"]
    auth: tuple[str, str] | None = None


class Router:
    """The transport table, then the relayhost, then MX lookup of the recipient's domain; built
    anew from the settings on reload."""

    def __init__(self, settings: Settings) -> None:
        d = settings.delivery
        self.port = d.port
        self.tls = d.tls
        self.transport = {k: parse_next_hop(v, d.port) for k, v in d.transport.items()}
        self.relayhost = parse_next_hop(d.relayhost, d.port) if d.relayhost else None
        self.relayhost_tls = d.relayhost_tls
        self.hostname = settings.hostname
        self.listening = _listening(settings)
        self.auth: tuple[str, str] | None = None
        if d.relayhost_user is not None and d.relayhost_password_file is not None:
            try:
                password = d.relayhost_password_file.read_text(encoding="utf-8").strip("\r\n")
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"[delivery] relayhost_password_file: cannot read "
                                  f"{d.relayhost_password_file}: {e}") from None
            if not password:
                raise ConfigError(f"[delivery] relayhost_password_file: {d.relayhost_password_file} is empty")
            with contextlib.suppress(OSError):
                if d.relayhost_password_file.stat().st_mode & 0o077:
                    log.warning("%s can be read by other users than its owner: chmod 600 it",
                                d.relayhost_password_file)
            self.auth = (d.relayhost_user, password)

    def route(self, domain: str) -> Route:
        domain = domain.lower().rstrip(".")
        hop = self.transport.get(domain)
        if hop is None:
            parts = domain.split(".")
            for i in range(1, len(parts)):
                hop = self.transport.get("." + ".".join(parts[i:]))
                if hop is not None:
                    break
        if hop is not None:
            host, port, mx = hop
            return Route(key=_hop_name(host, port, mx), host=host, port=port, mx=mx, tls=self.tls)
        if self.relayhost is not None:
            host, port, mx = self.relayhost
            tls = self.relayhost_tls if self.relayhost_tls == "encrypt" else "may"
            return Route(key=_hop_name(host, port, mx), host=host, port=port, mx=mx, tls=tls,
                         auth=self.auth)
        return Route(key=domain, host=domain, port=self.port, mx=True, tls=self.tls)

    async def hosts(self, route: Route, resolver: Resolver) -> list[MXHost]:
        """The hosts to try for ``route``, best first, without ourselves (RFC 5321 5.1).
        :class:`RouteFailure` when there are none: DNS trouble (temporary), NXDOMAIN or a null
        MX (permanent), or only ourselves (a loop)."""
        try:
            if not route.mx:
                if is_ip_literal(route.host):
                    return [MXHost(name=route.host, preference=0, addresses=(route.host,))]
                addresses = await resolver.addresses(route.host)
                return [MXHost(name=route.host, preference=0, addresses=tuple(addresses))]
            hosts = await resolver.mail_exchangers(route.host)
        except DNSFailure as e:
            raise RouteFailure(temporary=e.temporary, status=e.status, text=str(e)) from None
        mine = [h.preference for h in hosts if self.is_me(h, route.port)]
        if mine:
            # RFC 5321 5.1: we are one of the MX hosts: only those more preferred may be used.
            hosts = [h for h in hosts if h.preference < min(mine)]
            if not hosts:
                raise RouteFailure(temporary=False, status="5.4.6",
                                   text=f"mail for {route.host} loops back to myself")
        return hosts

    def is_me(self, host: MXHost, port: int) -> bool:
        """``host`` is this server: our host name, or an address and port our SMTP listens on."""
        if host.name.lower().rstrip(".") == self.hostname:
            return True
        return any((address, port) in self.listening for address in host.addresses)


def recipient_domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _hop_name(host: str, port: int, mx: bool) -> str:
    return f"{host}:{port}" if mx else f"[{host}]:{port}"


def _listening(settings: Settings) -> frozenset[tuple[str, int]]:
    """The addresses this server's SMTP listens on (an MX among them is this server)."""
    listening = set()
    for spec in settings.smtp.listen:
        with contextlib.suppress(ValueError):
            listening.add(parse_listen(spec))
    return frozenset(listening)
