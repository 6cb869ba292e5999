"""A private Postfix instance under one directory, for the benchmark.

Its own config_directory, queue_directory and data_directory; one smtpd on a loopback port;
virtual(8) delivery of ``USER@DOMAIN`` into a Maildir. Started with ``postfix -c DIR start`` and
stopped with ``postfix -c DIR stop``; nothing is chrooted and nothing touches /etc/postfix.
Needs root (Postfix drops privileges to its ``postfix`` user itself).

With ``relayhost`` it is a relay instead: mail from ``mynetworks`` (loopback) to any domain is
queued and forwarded by the ``smtp(8)`` client to that next hop (e.g. ``[127.0.0.1]:2626``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
MAIL_OWNER = "postfix"

# Debian's master.cf reduced to the services a local delivery needs, with no chroot.
MASTER_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# The SMTP client services a relaying instance adds (Debian's lines, without chroot).
RELAY_SERVICES = """\
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
"""


class PostfixInstance:
    def __init__(self, root: Path, host: str, port: int, domain: str, user: str,
                 delivery_user: pwd.struct_passwd, relayhost: str | None = None,
                 settings: dict[str, object] | None = None) -> None:
        self.root = root
        self.settings = settings or {}  # main.cf settings over the defaults below (e.g. SASL)
        self.relayhost = relayhost  # "[127.0.0.1]:PORT": relay everything non-local there
        self.host = host
        self.port = port
        self.domain = domain
        self.user = user
        self.delivery_user = delivery_user
        self.config_dir = root / "etc"
        self.queue_dir = root / "queue"
        self.data_dir = root / "data"
        self.mail_dir = root / "mail"
        self.log = root / "postfix.log"

    @property
    def maildir_new(self) -> Path:
        return self.mail_dir / self.domain / self.user / "new"

    def main_cf(self) -> str:
        uid, gid = self.delivery_user.pw_uid, self.delivery_user.pw_gid
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue_dir,
            "data_directory": self.data_dir,
            "mail_owner": MAIL_OWNER,
            "setgid_group": "postdrop",
            "maillog_file": self.log,
            "maillog_file_prefixes": self.root,
            "myhostname": f"postfix.{self.domain}",
            "mydomain": self.domain,
            "myorigin": "$myhostname",
            "inet_interfaces": self.host,
            "inet_protocols": "ipv4",
            "mydestination": "localhost",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "virtual_mailbox_domains": self.domain,
            "virtual_mailbox_base": self.mail_dir,
            "virtual_mailbox_maps": f"texthash:{self.config_dir / 'vmailbox'}",
            "virtual_uid_maps": f"static:{uid}",
            "virtual_gid_maps": f"static:{gid}",
            "virtual_minimum_uid": min(uid, 100),
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "append_dot_mydomain": "no",
        }
        if self.relayhost is not None:
            settings["relayhost"] = self.relayhost
        settings |= self.settings
        return "".join(f"{key} = {value}\n" for key, value in settings.items())

    def master_cf(self) -> str:
        relay = RELAY_SERVICES if self.relayhost is not None else ""
        return f"{self.host}:{self.port} inet n - n - - smtpd\n" + MASTER_SERVICES + relay

    def prepare(self) -> None:
        try:
            owner = pwd.getpwnam(MAIL_OWNER)
        except KeyError as exc:
            raise RuntimeError(f"no `{MAIL_OWNER}` user: Postfix is not installed") from exc
        if os.geteuid() != 0:
            raise RuntimeError("a private Postfix instance needs root")
        self.root.chmod(0o755)  # Postfix and the delivery user must reach their directories
        for folder in (self.config_dir, self.queue_dir, self.data_dir, self.mail_dir):
            folder.mkdir(parents=True, exist_ok=True)
        os.chown(self.data_dir, owner.pw_uid, owner.pw_gid)
        os.chown(self.mail_dir, self.delivery_user.pw_uid, self.delivery_user.pw_gid)
        (self.config_dir / "main.cf").write_text(self.main_cf())
        (self.config_dir / "master.cf").write_text(self.master_cf())
        (self.config_dir / "vmailbox").write_text(
            f"{self.user}@{self.domain} {self.domain}/{self.user}/\n")

    def queued_count(self) -> int:
        """Messages still in the queue (maildrop, incoming, active, deferred, hold): 0 once a
        relaying instance has handed everything on."""
        total = 0
        for name in ("maildrop", "incoming", "active", "deferred", "hold", "corrupt"):
            for _, _, files in os.walk(self.queue_dir / name):
                total += len(files)
        return total

    def postfix(self, action: str, timeout: float) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([POSTFIX, "-c", str(self.config_dir), action],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)

    def start(self, timeout: float) -> None:
        if not Path(POSTFIX).exists():
            raise RuntimeError("postfix is not installed (bash bench/install-peers.sh)")
        self.prepare()
        done = self.postfix("start", timeout)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace").strip()
            log = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
            raise RuntimeError(f"`postfix -c {self.config_dir} start` failed "
                               f"({done.returncode}): {output}\n{log}")

    def master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def stop(self, timeout: float) -> None:
        """``postfix stop``, a bounded wait for the master to exit, then ``postfix abort``."""
        pid = self.master_pid()
        if pid is None:
            return
        self.postfix("stop", timeout)
        if not wait_gone(pid, time.monotonic() + timeout):
            self.postfix("abort", timeout)
            wait_gone(pid, time.monotonic() + timeout)


def wait_gone(pid: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False
