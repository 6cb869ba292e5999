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
    "find_config",
    "load_settings",
    "parse_duration",
    "parse_listen",
]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and the problem."""


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
    max_connections_per_client: int = Field(20, ge=1)
    # Errors (5xx/4xx from protocol mistakes) before "421 Too many errors" (Postfix: smtpd_hard_error_limit).
    max_errors: int = Field(10, ge=1)
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
    # Bare CR or LF inside DATA: "reject" (554 5.5.2) or "normalize" (turned into CRLF).
    bare_newline: Literal["reject", "normalize"] = "reject"


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
    """``[queue]``: the durable outbound queue (delivery itself comes with the queue runner)."""

    lifetime: Duration = 5 * 86400.0


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
    smtp: SMTPSettings = SMTPSettings()
    submission: ListenerSettings = ListenerSettings(listen=["127.0.0.1:2587"])
    smtps: ListenerSettings = ListenerSettings(listen=["127.0.0.1:2465"])
    pop3: POP3Settings = POP3Settings()
    pop3s: ListenerSettings = ListenerSettings(listen=["127.0.0.1:2995"])
    tls: TLSSettings = TLSSettings()
    auth: AuthSettings = AuthSettings()
    queue: QueueSettings = QueueSettings()
    log: LogSettings = LogSettings()
    # Where the settings came from (None: built-in defaults); not a TOML key.
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str) -> str:
        v = v.strip().rstrip(".").lower()
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", v):
            raise ValueError(f"{v!r} is not a valid host name")
        return v

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        out = []
        for d in v:
            d = d.strip().rstrip(".").lower()
            if not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", d):
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
    tls = settings.tls.model_copy(update={
        "cert": (base / settings.tls.cert).resolve() if settings.tls.cert else None,
        "key": (base / settings.tls.key).resolve() if settings.tls.key else None,
    })
    return settings.model_copy(update={
        "data_dir": data_dir.resolve(), "tls": tls,
        "source": cfg_path.resolve() if cfg_path else None,
    })
