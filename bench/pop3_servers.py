"""The POP3 servers under test: taube and a private Dovecot, each in a directory of its own.

Each server gets N users (``user1@bench.test`` ...) whose Maildirs are filled once with the same
generated messages, written straight into ``new/``; the benchmark never deletes (no DELE), so the
mailboxes are reused by every run. Only processes started here are signalled, by their PID
(Dovecot's master process, which stops its children itself).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

from servers import (
    DOMAIN,
    HOST,
    VENV_BIN,
    ProcessServer,
    ServerUnavailable,
    free_port,
    logged_event_loop,
    run_taube,
    server_section,
    sbin_tool,
    terminate,
)

PASSWORD = "bench-password"
DOVECOT = sbin_tool("dovecot")
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
MAIL_OWNER = "nobody"  # Dovecot refuses mail access as root; its Maildirs belong to nobody


def user_name(index: int) -> str:
    return f"user{index}"


def message_bytes(number: int, size: int) -> bytes:
    """Message ``number`` of a mailbox: exactly ``size`` bytes, CRLF line ends, no line that
    starts with a dot (so what RETR returns, unstuffed, is byte for byte the file)."""
    header = (f"From: sender@{DOMAIN}\r\n"
              f"To: user@{DOMAIN}\r\n"
              f"Subject: POP3 bench message {number}\r\n"
              f"Message-ID: <pop3-bench-{number}@{DOMAIN}>\r\n"
              "Date: Sun, 22 Nov 2026 08:00:00 +0000\r\n"
              "\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = bytearray()
    while len(header) + len(body) < size - 2:
        body += line
    text = header + bytes(body[:max(0, size - 2 - len(header))])
    return text + b"\r\n" if size >= len(header) + 2 else text


def fill_maildir(maildir: Path, messages: int, size: int, owner: pwd.struct_passwd | None) -> None:
    """Writes ``messages`` files into ``maildir/new`` with Maildir names carrying ``S=``."""
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    now = int(time.time())
    pid = os.getpid()
    for n in range(1, messages + 1):
        data = message_bytes(n, size)
        name = f"{now}.M{n:06d}P{pid}Q{n}.{DOMAIN},S={len(data)}"
        (maildir / "new" / name).write_bytes(data)
    if owner is not None:
        for folder, dirs, files in os.walk(maildir):
            os.chown(folder, owner.pw_uid, owner.pw_gid)
            for entry in files:
                os.chown(os.path.join(folder, entry), owner.pw_uid, owner.pw_gid)


class Pop3Server(ProcessServer):
    """Common part: a work directory, a port, N users with filled Maildirs, one child process
    (started, probed for its +OK greeting and stopped as any ProcessServer)."""

    name = "pop3"
    tests: tuple[str, ...] = ("download", "login")
    greeting = b"+OK"
    append_log = True

    def __init__(self, workdir: Path, users: int, messages: int, size: int) -> None:
        self.users = users
        self.messages = messages
        self.size = size
        super().__init__(workdir)

    def maildir(self, index: int) -> Path:
        raise NotImplementedError

    def logins(self) -> list[tuple[str, str]]:
        return [(f"{user_name(i)}@{DOMAIN}", PASSWORD) for i in range(1, self.users + 1)]

    def prepare(self) -> None:
        """Configuration, users and mailboxes, before the process starts."""
        raise NotImplementedError


class TaubePop3(Pop3Server):
    name = "taube"
    executable = VENV_BIN / "taube"
    workers: int | None = None

    @property
    def config(self) -> Path:
        return self.workdir / "taube.toml"

    def maildir(self, index: int) -> Path:
        return self.workdir / "var" / "mail" / DOMAIN / user_name(index)

    def config_text(self) -> str:
        return (f'hostname = "{DOMAIN}"\n'
                'data_dir = "var"\n'
                f'domains = ["{DOMAIN}"]\n'
                "[smtp]\n"
                f'listen = ["{HOST}:{free_port()}"]\n'
                "[submission]\nlisten = []\n"
                "[smtps]\nlisten = []\n"
                "[pop3]\n"
                f'listen = ["{HOST}:{self.port}"]\n'
                "plaintext_requires_tls = false\n"
                "max_connections = 500\n"
                "max_connections_per_client = 500\n"
                "[pop3s]\nlisten = []\n"
                "[auth]\nfailure_delay = 0\n")

    def prepare(self) -> None:
        if not self.executable.exists():
            raise ServerUnavailable(f"{self.executable} is not installed")
        self.config.write_text(self.config_text() + server_section(self.workers))
        for address, password in self.logins():
            run_taube(self.executable, self.config, self.workdir, "user", "add", address,
                      stdin=f"{password}\n".encode())
        for i in range(1, self.users + 1):
            fill_maildir(self.maildir(i), self.messages, self.size, None)

    def command(self) -> list[str]:
        return [str(self.executable), "serve", "--config", str(self.config)]

    def event_loop(self) -> str | None:
        return logged_event_loop(self.log)


def dovecot_version() -> str | None:
    try:
        done = subprocess.run([DOVECOT, "--version"], capture_output=True, timeout=10,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.decode(errors="replace").strip() or None


class DovecotPop3(Pop3Server):
    """A private Dovecot: its own base_dir, state_dir, log, passwd-file and Maildirs under the
    work directory; only POP3, on one loopback port; ``/etc/dovecot`` is never read."""

    name = "dovecot"

    @property
    def config(self) -> Path:
        return self.workdir / "dovecot.conf"

    def maildir(self, index: int) -> Path:
        return self.workdir / "mail" / DOMAIN / user_name(index)

    def config_text(self, owner: pwd.struct_passwd) -> str:
        d = self.workdir
        version = dovecot_version() or "2.3"
        major_minor = tuple(int(x) for x in version.split()[0].split(".")[:2])
        cleartext = ("auth_allow_cleartext = yes" if major_minor >= (2, 4)
                     else "disable_plaintext_auth = no")
        return f"""\
# Private Dovecot POP3 instance for bench/pop3_bench.py; nothing here is read from /etc/dovecot.
instance_name = taube-bench-{self.port}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
listen = {HOST}
protocols = pop3
ssl = no
{cleartext}
auth_mechanisms = plain
default_internal_user = dovecot
default_login_user = dovenull
mail_location = maildir:{d}/mail/%d/%n
mail_uid = {owner.pw_uid}
mail_gid = {owner.pw_gid}
first_valid_uid = {owner.pw_uid}
first_valid_gid = {owner.pw_gid}
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = home={d}/mail/%d/%n
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {HOST}
    port = {self.port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""

    def prepare(self) -> None:
        if not Path(DOVECOT).exists():
            raise ServerUnavailable("dovecot is not installed (bash bench/install-peers.sh)")
        if os.geteuid() != 0:
            raise ServerUnavailable("a private Dovecot needs root here (it switches users)")
        try:
            owner = pwd.getpwnam(MAIL_OWNER)
            for needed in ("dovecot", "dovenull"):
                pwd.getpwnam(needed)
        except KeyError as exc:
            raise ServerUnavailable(f"missing system user: {exc}") from exc
        # The mail processes run as nobody: they must be able to walk down to the Maildirs.
        self.workdir.chmod(0o755)
        self.config.write_text(self.config_text(owner))
        (self.workdir / "passwd").write_text(
            "".join(f"{address}:{self.password_entry(password)}::::::\n"
                    for address, password in self.logins()))
        (self.workdir / "passwd").chmod(0o644)
        for i in range(1, self.users + 1):
            fill_maildir(self.maildir(i), self.messages, self.size, owner)
        mail_root = self.workdir / "mail"
        for folder in (mail_root, mail_root / DOMAIN):
            os.chown(folder, owner.pw_uid, owner.pw_gid)

    def password_entry(self, password: str) -> str:
        return f"{{PLAIN}}{password}"

    def command(self) -> list[str]:
        # -F: stay in the foreground, so the PID we hold is the master's.
        return [DOVECOT, "-F", "-c", str(self.config)]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            subprocess.run([DOVEADM, "-c", str(self.config), "stop"], capture_output=True,
                           timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            pass
        terminate(self.process)  # waits for the master's exit; SIGTERM only if still there


class DovecotArgon2Pop3(DovecotPop3):
    """The same private Dovecot, but its passwd-file holds argon2id hashes with taube's own
    parameters (taube.directory.passwords.HASHER), so a login costs both servers the same hash
    verification; Dovecot verifies them with libsodium. Only the login test is run on it."""

    name = "dovecot-argon2id"
    tests = ("login",)

    def password_entry(self, password: str) -> str:
        try:
            from taube.directory.passwords import HASHER
        except ImportError as exc:
            raise ServerUnavailable(f"taube's password hasher cannot be imported: {exc}") from exc
        return f"{{ARGON2ID}}{HASHER.hash(password)}"


SERVERS: dict[str, type[Pop3Server]] = {"taube": TaubePop3, "dovecot": DovecotPop3,
                                         "dovecot-argon2id": DovecotArgon2Pop3}
