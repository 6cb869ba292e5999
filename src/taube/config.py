"""Configuration: one TOML file, parsed once, validated into typed settings.

Each section has one owning component (``[smtp]`` the SMTP listeners and engine, ``[queue]`` the
spool, ...). A bad value fails at start with a message naming the key and the problem.

Where the file is found: ``--config FILE``, else ``$TAUBE_CONFIG``, else ``taube.toml`` in the
working directory if present, else the built-in defaults (data under ``./var``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "ConfigError",
    "Settings",
    "SMTPSettings",
    "ServerSettings",
    "find_config",
    "load_settings",
    "parse_duration",
    "parse_listen",
    "parse_next_hop",
    "split_nameserver",
]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and the problem."""


# A host or domain name, lower case, without trailing dot.
_DOMAIN_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: Any) -> float:
    """``300``, ``"300s"``, ``"5m"``, ``"1.5h"``, ``"5d"`` -> seconds as float."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '5m'")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"{value!r} is not a duration (examples: 30, '30s', '5m', '2h', '5d')")


Duration = Annotated[float, BeforeValidator(parse_duration)]


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:2525"``, ``"[::1]:2525"``, ``":2525"`` -> (host, port)."""
    if not isinstance(value, str):
        raise ValueError("a listen address is a string 'host:port'")
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]*):(\d+)", value.strip())
    if not m:
        raise ValueError(f"{value!r} is not 'host:port' (IPv6 as '[::1]:port')")
    host = m.group(1) if m.group(1) is not None else m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range in {value!r}")
    return host or "0.0.0.0", port


def _listen_list(values: Any) -> list[str]:
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list):
        raise ValueError("must be a list of 'host:port' strings")
    for v in values:
        parse_listen(v)
    return values


ListenList = Annotated[list[str], BeforeValidator(_listen_list)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SMTPSettings(_Section):
    """``[smtp]``: the port-25-style listener and the SMTP engine's limits."""

    listen: ListenList = ["127.0.0.1:2525"]
    # RFC 1870 SIZE; 25 MiB as Postfix's message_size_limit (10 MB) raised to today's habits.
    max_message_size: int = Field(26214400, ge=1024)
    # RFC 5321 4.5.3.1.8: at least 100 recipients must be accepted.
    max_recipients: int = Field(100, ge=1)
    # Connections in total and per client address (Postfix: smtpd_client_connection_count_limit).
    max_connections: int = Field(200, ge=1)
    # Clients in trusted_networks are exempt, as Postfix exempts mynetworks; 50 as Postfix's
    # smtpd_client_connection_count_limit.
    max_connections_per_client: int = Field(50, ge=1)
    # Errors (5xx/4xx replies to the client's mistakes, unknown recipients included) before
    # "421 4.7.0 Too many errors" (Postfix: smtpd_hard_error_limit, 20).
    max_errors: int = Field(20, ge=1)
    # After this many errors every further error reply waits error_sleep (Postfix:
    # smtpd_soft_error_limit 10, smtpd_error_sleep_time 1s).
    soft_error_limit: int = Field(10, ge=0)
    error_sleep: Duration = 1.0
    # Wait this long before the 220 greeting to clients outside trusted_networks; a client that
    # talks first gets "554 5.5.0 Error: SMTP protocol synchronization" (0 switches it off).
    greet_delay: Duration = 1.0
    # RFC 2920 3.1 (Postfix smtpd_forbid_unauth_pipelining, on since 3.9): input sent before the
    # reply to EHLO/HELO/DATA/STARTTLS/AUTH, or any pipelining after HELO, ends the session with
    # "554 5.5.0 Error: SMTP protocol synchronization". false: tolerated.
    strict_pipelining: bool = True
    # The message's header section (Postfix header_size_limit): larger gets 552 5.3.4.
    max_header_size: int = Field(102400, ge=1024)
    # Free space the filesystem of data_dir keeps (Postfix queue_minfree): below it MAIL gets
    # "452 4.3.1 Insufficient system storage", as does a SIZE= larger than the space above it.
    min_free_space: int = Field(52428800, ge=0)
    # VRFY: "ambiguous" answers 252 for everyone (no user enumeration), "local" answers
    # 250/550 from the user directory, "off" answers 502.
    vrfy: Literal["ambiguous", "local", "off"] = "ambiguous"
    # EXPN: "off" answers 502, "aliases" expands aliases for trusted clients.
    expn: Literal["off", "aliases"] = "off"
    # RFC 5321 4.5.3.2 timeouts.
    timeout_command: Duration = 300.0  # 4.5.3.2.7 server timeout: 5 minutes
    timeout_data_block: Duration = 180.0  # 4.5.3.2.5: 3 minutes per data block
    # Grace for transactions in flight at shutdown before 421.
    shutdown_grace: Duration = 10.0
    # ETRN (RFC 1985): who may start a queue run: "trusted" networks, "anyone", or "off" (502).
    etrn: Literal["trusted", "anyone", "off"] = "trusted"
    # Bare CR or LF inside DATA: "reject" (554 5.5.2) or "normalize" (turned into CRLF).
    bare_newline: Literal["reject", "normalize"] = "reject"
    # Per client address and minute, counted across every process that serves SMTP (Postfix
    # anvil: smtpd_client_connection_rate_limit, _message_rate_limit, _recipient_rate_limit).
    # Clients in trusted_networks are exempt; 0 switches a limit off.
    max_connection_rate: int = Field(0, ge=0)  # new connections; more get 421 4.7.0
    max_message_rate: int = Field(0, ge=0)  # MAIL commands; more get 450 4.7.1
    max_recipient_rate: int = Field(0, ge=0)  # RCPT commands; more get 450 4.7.1


class ListenerSettings(_Section):
    """``[submission]`` (RFC 6409, STARTTLS then AUTH) and ``[smtps]`` (RFC 8314 implicit TLS):
    both demand AUTH before MAIL."""

    listen: ListenList = []


class POP3Settings(_Section):
    """``[pop3]``: the POP3 listener (RFC 1939; STLS, CAPA, SASL)."""

    listen: ListenList = ["127.0.0.1:2110"]
    # USER/PASS and the plaintext SASL mechanisms only after STLS (RFC 2595 section 2).
    plaintext_requires_tls: bool = True
    user_command: bool = True  # offer USER/PASS at all
    # RFC 1939 section 3: the autologout timer must be at least 10 minutes.
    timeout: Duration = 600.0
    max_errors: int = Field(10, ge=1)
    max_connections: int = Field(200, ge=1)
    max_connections_per_client: int = Field(20, ge=1)


class TLSSettings(_Section):
    """``[tls]``: certificate chain and key (PEM), relative to the config file. Without them a
    self-signed certificate for ``hostname`` is made under ``<data_dir>/tls``."""

    cert: Path | None = None
    key: Path | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> TLSSettings:
        if (self.cert is None) != (self.key is None):
            raise ValueError("give both cert and key, or neither")
        return self


Mechanism = Literal["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"]


class AuthSettings(_Section):
    """``[auth]``: SMTP AUTH (RFC 4954), and the failure throttling shared with POP3."""

    mechanisms: list[Mechanism] = ["PLAIN", "LOGIN", "SCRAM-SHA-256"]
    require_tls: bool = True  # no AUTH (and no password) before TLS, loopback included
    legacy_auth_line: bool = True  # also announce "AUTH=..." for old Outlook versions
    # Failed logins from one address: each waits failure_delay x (failures so far) before its
    # answer; max_failures within failure_window block the address for failure_window (421).
    max_failures: int = Field(10, ge=1)
    failure_window: Duration = 900.0
    failure_delay: Duration = 1.0
    # The envelope sender of an authenticated client must be one of its addresses (553 5.7.1).
    sender_login_match: bool = True
    # Note the authenticated user in the Received: header (off: privacy).
    received_header_user: bool = False
    # SMTP-after-POP (legacy): after a POP3 login from an address, SMTP clients from that
    # address may relay for this long without AUTH. 0 switches it off.
    smtp_after_pop: Duration = 0.0

    # Keep a plaintext-equivalent secret per user (set by `taube user add/passwd`), which CRAM-MD5
    # and APOP need. Off by default: whoever reads the database can log in as anyone.
    legacy_secrets: bool = False

    @field_validator("mechanisms")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _cram_needs_secrets(self) -> AuthSettings:
        if "CRAM-MD5" in self.mechanisms and not self.legacy_secrets:
            raise ValueError("mechanisms: CRAM-MD5 needs legacy_secrets = true (plaintext-equivalent secrets)")
        return self


class QueueSettings(_Section):
    """``[queue]``: the durable outbound queue and its retry schedule (Postfix's qmgr settings)."""

    # After this long in the queue a recipient still deferred is bounced (maximal_queue_lifetime).
    lifetime: Duration = 5 * 86400.0
    # Waits between attempts after a temporary failure; the last one repeats until the lifetime.
    backoff: list[Duration] = [300.0, 600.0, 1200.0, 2400.0, 3600.0]
    # A "delayed" notice to the sender once a recipient has waited this long (0: never).
    delay_warning: Duration = 4 * 3600.0
    # How often the runner looks for due messages even when nothing woke it.
    scan_interval: Duration = 30.0

    @field_validator("backoff")
    @classmethod
    def _backoff(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("give at least one wait, e.g. ['5m', '10m', '20m', '40m', '1h']")
        if any(wait < 1 for wait in v):
            raise ValueError("each wait must be at least 1s")
        return v


def _next_hop(value: Any) -> str:
    """``"host"``, ``"host:port"``, ``"[host]:port"`` (brackets: no MX lookup, as in Postfix)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a next hop is a string 'host', 'host:port' or '[host]:port'")
    value = value.strip()
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]\s]+)(?::(\d+))?|\[?([0-9A-Fa-f:]+:[0-9A-Fa-f:.]*)\]?:(\d+)", value)
    if not m:
        raise ValueError(f"{value!r} is not 'host', 'host:port' or '[host]:port'")
    port = m.group(2) or m.group(4) or m.group(6)
    if port is not None and not 1 <= int(port) <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return value


NextHop = Annotated[str, BeforeValidator(_next_hop)]


def parse_next_hop(value: str, default_port: int = 25) -> tuple[str, int, bool]:
    """A relayhost or transport value as (host, port, look up MX). As in Postfix, ``[host]`` in
    brackets and IP addresses are contacted directly; a bare host name is a mail domain whose MX
    records are looked up."""
    value = _next_hop(value)
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", value)
    if m:
        return m.group(1), int(m.group(2) or default_port), False
    if value.count(":") > 1:  # a bare IPv6 address with a port: "::1:2525"
        host, _, port = value.rpartition(":")
        return host, int(port), False
    host, _, port = value.partition(":")
    try:
        ipaddress.ip_address(host)
        direct = True
    except ValueError:
        direct = False
    return host.lower(), int(port or default_port), not direct


class DeliverySettings(_Section):
    """``[delivery]``: how the queue runner reaches other mail servers."""

    # Send everything that is not local through this smarthost instead of looking up MX records.
    relayhost: NextHop | None = None
    relayhost_user: str | None = None  # AUTH PLAIN/LOGIN to the relayhost (only over TLS)
    relayhost_password_file: Path | None = None  # the password, alone in a file (mode 0600)
    # TLS towards the relayhost: "may" (STARTTLS when offered), "encrypt" (required).
    relayhost_tls: Literal["may", "encrypt"] = "may"
    # TLS towards other servers: "may" (opportunistic, RFC 3207), "encrypt", "none".
    tls: Literal["none", "may", "encrypt"] = "may"
    # Verify the next hop's certificate (off by default, as is usual between MTAs).
    tls_verify: bool = False
    tls_ca_file: Path | None = None
    # Static routes, like Postfix's transport table: "example.org" = "127.0.0.1:2626";
    # ".example.org" matches the subdomains. A route's value is a next hop as for relayhost.
    transport: dict[str, NextHop] = {}
    port: int = Field(25, ge=1, le=65535)  # where MX hosts are contacted
    max_connections: int = Field(20, ge=1)  # outbound SMTP connections in total
    max_connections_per_destination: int = Field(4, ge=1)
    max_recipients_per_transaction: int = Field(50, ge=1, le=1000)
    connect_timeout: Duration = 30.0
    command_timeout: Duration = 300.0  # RFC 5321 4.5.3.2: 5 minutes for MAIL/RCPT
    data_timeout: Duration = 600.0  # RFC 5321 4.5.3.2.6: 10 minutes for the final reply
    # Deliver from a process of its own (a second core for delivery); false: inside the server.
    runner_process: bool = True
    # Where failures of mail from <> are reported: "postmaster" (a notice) or "log" only.
    null_sender_failures: Literal["postmaster", "log"] = "postmaster"

    @field_validator("transport")
    @classmethod
    def _transport(cls, v: dict[str, str]) -> dict[str, str]:
        out = {}
        for domain, hop in v.items():
            key = domain.strip().lower().rstrip(".")
            if not _DOMAIN_NAME.fullmatch(key.removeprefix(".")):  # ".domain": its subdomains
                raise ValueError(f"{domain!r} is not a domain name")
            out[key] = hop
        return out

    @model_validator(mode="after")
    def _auth(self) -> DeliverySettings:
        if (self.relayhost_user is None) != (self.relayhost_password_file is None):
            raise ValueError("give both relayhost_user and relayhost_password_file, or neither")
        if self.relayhost_user is not None and self.relayhost is None:
            raise ValueError("relayhost_user needs a relayhost")
        return self


def _nameserver(value: Any) -> str:
    """``"192.0.2.53"``, ``"127.0.0.1:5353"``, ``"[::1]:5353"``, ``"::1"``."""
    if not isinstance(value, str):
        raise ValueError("a name server is a string 'address' or 'address:port'")
    split_nameserver(value)
    return value


def split_nameserver(value: str) -> tuple[str, int]:
    """A ``[dns] nameservers`` entry as (IP address, port); ValueError if it is not one."""
    text = value.strip()
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?", text)
    if m:
        host, port = m.group(1), m.group(2)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address with optional port") from None
    number = int(port) if port else 53
    if not 1 <= number <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host, number


class DNSSettings(_Section):
    """``[dns]``: the resolver for MX and address lookups. Empty: ``/etc/resolv.conf``."""

    nameservers: list[Annotated[str, BeforeValidator(_nameserver)]] = []
    timeout: Duration = 10.0  # per lookup, all name servers and retries included


def _zone(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a DNS list zone is a domain name")
    zone = value.strip().rstrip(".").lower()
    if not _DOMAIN_NAME.fullmatch(zone):
        raise ValueError(f"{value!r} is not a domain name")
    return zone


Zone = Annotated[str, BeforeValidator(_zone)]


class ChecksSettings(_Section):
    """``[checks]``: mail authentication and inbound policy for clients outside
    trusted_networks that have not authenticated. "tag" records the result in the
    Authentication-Results header; "enforce" also refuses what fails."""

    spf: Literal["off", "tag", "enforce"] = "off"  # RFC 7208; enforce: -all fail is 550 5.7.23
    dkim: Literal["off", "tag"] = "off"  # RFC 6376: every DKIM-Signature verified
    arc: Literal["off", "tag"] = "off"  # RFC 8617: the ARC chain verified
    # RFC 7489; enforce: p=reject is 550 5.7.1 after DATA, p=quarantine delivered with
    # "X-Taube-DMARC: quarantine".
    dmarc: Literal["off", "tag", "enforce"] = "off"
    dnsbl: list[Zone] = []  # DNS block lists: a listed client gets 554 5.7.1 at RCPT
    dnswl: list[Zone] = []  # DNS allow lists: a listed client is never greylisted
    greylist: bool = False
    greylist_delay: Duration = 300.0  # a retry after this passes
    greylist_expiry: Duration = 35 * 86400.0  # a triple not seen for this long is forgotten


# More worker processes than this buys nothing but memory and context switches on any machine
# this server is meant for; a typo such as 1000 would otherwise start a thousand interpreters.
MAX_WORKERS = 64


def _default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


class ServerSettings(_Section):
    """``[server]``: the processes. ``workers`` processes accept connections on the same
    listening sockets (bound once by a supervisor); 1 keeps a single process that accepts and
    supervises the queue runner itself. The default is one worker per CPU."""

    workers: int = Field(default_factory=_default_workers, ge=1, le=MAX_WORKERS)


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


def _default_hostname() -> str:
    return socket.getfqdn() or socket.gethostname() or "localhost"


class Settings(_Section):
    """The whole configuration. ``data_dir`` is absolute after loading."""

    hostname: str = Field(default_factory=_default_hostname)
    data_dir: Path = Path("var")
    domains: list[str] = []
    trusted_networks: list[str] = ["127.0.0.0/8", "::1/128"]
    postmaster: str = "postmaster"
    server: ServerSettings = Field(default_factory=ServerSettings)
    smtp: SMTPSettings = SMTPSettings()
    submission: ListenerSettings = ListenerSettings(listen=["127.0.0.1:2587"])
    smtps: ListenerSettings = ListenerSettings(listen=["127.0.0.1:2465"])
    pop3: POP3Settings = POP3Settings()
    pop3s: ListenerSettings = ListenerSettings(listen=["127.0.0.1:2995"])
    tls: TLSSettings = TLSSettings()
    auth: AuthSettings = AuthSettings()
    queue: QueueSettings = QueueSettings()
    delivery: DeliverySettings = DeliverySettings()
    dns: DNSSettings = DNSSettings()
    checks: ChecksSettings = ChecksSettings()
    log: LogSettings = LogSettings()
    # Where the settings came from (None: built-in defaults); not a TOML key.
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str) -> str:
        v = v.strip().rstrip(".").lower()
        if not _DOMAIN_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid host name")
        return v

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        out = []
        for d in v:
            d = d.strip().rstrip(".").lower()
            if not _DOMAIN_NAME.fullmatch(d):
                raise ValueError(f"{d!r} is not a valid domain name")
            out.append(d)
        return out

    @field_validator("trusted_networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for n in v:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError:
                raise ValueError(f"{n!r} is not a network (examples: '192.0.2.0/24', '::1/128')") from None
        return v

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.trusted_networks]


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to use, or None for the built-in defaults."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("TAUBE_CONFIG")
    if env:
        return Path(env)
    here = Path("taube.toml")
    return here if here.is_file() else None


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read and validate the configuration; raise ConfigError with a readable message."""
    cfg_path = find_config(path)
    data: dict[str, Any] = {}
    base = Path.cwd()
    source = "built-in defaults"
    if cfg_path is not None:
        source = str(cfg_path)
        try:
            raw = cfg_path.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read configuration {cfg_path}: {e.strerror}") from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"invalid TOML in {cfg_path}: {e}") from None
        base = cfg_path.resolve().parent
    try:
        settings = Settings.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None
    data_dir = settings.data_dir if settings.data_dir.is_absolute() else base / settings.data_dir
    delivery = settings.delivery
    if delivery.relayhost_password_file is not None or delivery.tls_ca_file is not None:
        delivery = delivery.model_copy(update={
            "relayhost_password_file": (base / delivery.relayhost_password_file).resolve()
            if delivery.relayhost_password_file else None,
            "tls_ca_file": (base / delivery.tls_ca_file).resolve() if delivery.tls_ca_file else None,
        })
    tls = settings.tls.model_copy(update={
        "cert": (base / settings.tls.cert).resolve() if settings.tls.cert else None,
        "key": (base / settings.tls.key).resolve() if settings.tls.key else None,
    })
    return settings.model_copy(update={
        "data_dir": data_dir.resolve(), "tls": tls, "delivery": delivery,
        "source": cfg_path.resolve() if cfg_path else None,
    })
