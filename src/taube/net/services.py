"""What the protocol sessions use, in one object: assembled by the application (``app.py``),
replaced whole on reload, so a connection keeps the settings it started with."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
from ..directory.base import Directory
from ..policy.relay import RelayPolicy
from ..queue.spool import Spool
from ..sharedstate import SharedState
from .tls import TLSProvider

__all__ = ["TLS_HANDSHAKE_TIMEOUT", "Services"]

TLS_HANDSHAKE_TIMEOUT = 30.0  # STARTTLS/STLS and implicit TLS


@dataclass(slots=True)
class Services:
    settings: Settings
    directory: Directory
    relay: RelayPolicy
    spool: Spool  # also the Maildir store (spool.maildirs) that POP3 reads
    state: SharedState
    tls: TLSProvider | None
