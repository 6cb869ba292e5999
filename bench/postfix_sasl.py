"""SMTP AUTH for the private Postfix relay: a private Dovecot that runs only its auth service.

Postfix's smtpd has no password store of its own; Debian's Postfix asks Dovecot's auth service
over a UNIX socket (``smtpd_sasl_type = dovecot``), the usual pairing. This instance runs no mail
protocol (``protocols = none``), keeps its sockets, state and log under the run's directory, and
reads a passwd-file holding an ``{ARGON2ID}`` hash made with taube's own hasher and parameters,
so a login costs Postfix what it costs taube. ``/etc/dovecot`` is never read, the system's
Dovecot never touched; the process is stopped by the PID the bench started.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from servers import ServerUnavailable, sbin_tool, spawn, terminate

DOVECOT = sbin_tool("dovecot")
READY_TIMEOUT = 30.0


class DovecotAuth:
    def __init__(self, root: Path, user: str, password: str) -> None:
        self.root = root / "sasl"
        self.user = user
        self.password = password
        self.config = self.root / "dovecot.conf"
        self.log = self.root / "dovecot.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        """Where Postfix connects: ``smtpd_sasl_path``."""
        return self.root / "run" / "auth-postfix"

    def config_text(self) -> str:
        d = self.root
        return f"""\
# Private Dovecot auth service for the relay bench's Postfix; nothing is read from /etc/dovecot.
instance_name = taube-bench-sasl-{os.getpid()}-{id(self)}
base_dir = {d}/run
state_dir = {d}/state
log_path = {self.log}
protocols = none
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = dovecot
default_login_user = dovenull
passdb {{
  driver = passwd-file
  args = username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service auth {{
  unix_listener auth-postfix {{
    mode = 0666
  }}
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""

    def start(self) -> None:
        if not Path(DOVECOT).exists():
            raise ServerUnavailable("dovecot is not installed (bash bench/install-peers.sh): "
                                    "Postfix has no SASL for the relay bench without it")
        try:
            from taube.directory.passwords import HASHER
        except ImportError as exc:
            raise ServerUnavailable(f"taube's password hasher cannot be imported: {exc}") from exc
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self.config.write_text(self.config_text())
        passwd = self.root / "passwd"
        passwd.write_text(f"{self.user}:{{ARGON2ID}}{HASHER.hash(self.password)}::::::\n")
        passwd.chmod(0o644)
        self.process = spawn([DOVECOT, "-F", "-c", str(self.config)], self.log, self.root,
                             append=True)
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log.read_text(errors="replace")[-800:] if self.log.exists() else ""
                raise ServerUnavailable(f"Dovecot's auth service did not start:\n{tail}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)

    def postfix_settings(self) -> dict[str, object]:
        """What main.cf needs: AUTH offered and required for relaying (``mynetworks`` no longer
        permits it), no TLS required before AUTH (the bench's loopback runs without TLS)."""
        return {
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "dovecot",
            "smtpd_sasl_path": self.socket,
            "smtpd_relay_restrictions": "permit_sasl_authenticated, reject_unauth_destination",
            "smtpd_tls_auth_only": "no",
        }

