"""One delivery attempt: a connection to one of a route's hosts, then one transaction per message
over it, the client's results turned into an :class:`~.outcome.Outcome` per recipient.

The hosts are tried in the order :meth:`.routing.Router.hosts` gives (MX preference, RFC 5321
5.1), each of their addresses in turn, until one session is ready for MAIL. The outcome of a
recipient keeps the next hop's reply and its RFC 3463 enhanced status code: 2xx after DATA is
"sent", 5xx "bounced", 4xx "deferred"; a failure of the whole transaction (a connection lost or
timed out, a 421) defers every recipient in it with the client's status made temporary.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from ..config import DeliverySettings
from ..queue.store import PENDING, QueueEntry, QueueStore
from .client import OutboundConnection, OutRecipient, SMTPClientError, TransactionResult
from .dns import MXHost
from .outcome import Outcome, RouteFailure, as_temporary
from .reports import NOTICE_PARAM
from .routing import Route

__all__ = ["Connection", "Transmission", "connect", "transmit"]

log = logging.getLogger("taube.delivery")


@dataclass(frozen=True, slots=True)
class Connection:
    """An open session with one host of a route, as the outcomes name it."""

    conn: OutboundConnection
    relay: str  # "mx.example.org[192.0.2.1]:25"
    remote_mta: str  # the host's name


@dataclass(frozen=True, slots=True)
class Transmission:
    """What one transaction did: an outcome per recipient, whether the DSN parameters went
    along (the next hop reports from now on), and whether the connection can go on."""

    outcomes: dict[str, Outcome]
    dsn_passed: bool
    usable: bool


async def connect(route: Route, hosts: list[MXHost], *, helo: str,
                  delivery: DeliverySettings) -> Connection:
    """A session ready for MAIL with the first of ``hosts`` that takes one; :class:`RouteFailure`
    carrying the last host's failure when none does (temporary if any failure was)."""
    errors: list[SMTPClientError] = []
    last_relay = "none"
    for host in hosts:
        for address in host.addresses:
            last_relay = _relay(host.name, address, route.port)
            try:
                conn = await OutboundConnection.open(
                    address=address, port=route.port, server_name=host.name, helo=helo,
                    tls=route.tls, verify=delivery.tls_verify,
                    ca_file=str(delivery.tls_ca_file) if delivery.tls_ca_file else None,
                    auth=route.auth, connect_timeout=delivery.connect_timeout,
                    command_timeout=delivery.command_timeout, data_timeout=delivery.data_timeout,
                )
            except SMTPClientError as e:
                log.info("connect %s: %s", last_relay, e)
                errors.append(e)
                continue
            return Connection(conn, last_relay, host.name)
    if not errors:
        raise RouteFailure(temporary=True, status="4.4.1", text=f"no address for {route.key}")
    last = errors[-1]
    temporary = any(e.temporary for e in errors)
    # The client's status: the reply's, or the one it gave the failure (4.7.4 TLS not
    # offered, 4.7.5 handshake failed, 4.7.10 no AUTH without TLS, 4.4.1 no answer, ...).
    status = as_temporary(last.status) if temporary else last.status
    if last.reply is not None:
        raise RouteFailure(temporary=temporary, status=status, text=str(last),
                           diagnostic=last.reply.diagnostic(),
                           remote_mta=hosts[-1].name if hosts else None, relay=last_relay)
    raise RouteFailure(temporary=temporary, status=status, text=str(last), relay=last_relay)


async def transmit(connection: Connection, entry: QueueEntry, addresses: Collection[str],
                   store: QueueStore) -> Transmission | None:
    """One transaction for those of ``addresses`` still pending in ``entry``, the message
    streamed from its queue file; None when there is nothing to send (the message left the
    queue meanwhile, or none of them is pending)."""
    recipients = [r for r in entry.recipients if r.address in addresses and r.status in PENDING]
    if not recipients:
        return None
    loop = asyncio.get_running_loop()
    try:
        message = await loop.run_in_executor(None, store.open_message, entry.queue_id,
                                             entry.body_offset)
    except FileNotFoundError as e:
        log.info("%s: no longer queued (%s)", entry.queue_id, e)
        return None
    params = {k: v for k, v in entry.params.items() if k != NOTICE_PARAM}
    out = [OutRecipient(address=r.address, notify=tuple(r.notify) if r.notify is not None else None,
                        orcpt=r.orcpt) for r in recipients]
    try:
        result = await connection.conn.send(sender=entry.sender, recipients=out,
                                             message=message, params=params)
    except SMTPClientError as e:
        outcome = Outcome(kind="deferred", status=as_temporary(e.status), text=str(e),
                          diagnostic=e.reply.diagnostic() if e.reply else None,
                          remote_mta=connection.remote_mta, relay=connection.relay)
        return Transmission({r.address: outcome for r in recipients}, False, False)
    finally:
        message.close()
    return Transmission(outcomes(result, connection), result.dsn, connection.conn.usable)


def outcomes(result: TransactionResult, connection: Connection) -> dict[str, Outcome]:
    """The client's reply per recipient as outcomes, enhanced status codes kept."""
    out = {}
    for address, reply in result.replies.items():
        kind: Literal["sent", "deferred", "bounced"] = (
            "sent" if reply.ok else "deferred" if reply.temporary else "bounced")
        out[address] = Outcome(kind=kind, status=reply.status(), text=str(reply),
                               diagnostic=reply.diagnostic(),
                               remote_mta=connection.remote_mta, relay=connection.relay)
    return out


def _relay(name: str, address: str, port: int) -> str:
    return f"{name}[{address}]:{port}"
