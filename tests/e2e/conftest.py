"""End-to-end fixtures: the real ``taube serve`` process on free loopback ports."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TAUBE = str(Path(sys.executable).with_name("taube"))
DEADLINE = 15.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = DEADLINE, interval: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def _listen(port: int | None) -> str:
    return f'"127.0.0.1:{port}"' if port else ""


def with_defaults(toml: str, **defaults: object) -> str:
    """The keys of one table: each default whose key ``toml`` does not set itself (TOML forbids
    a key twice), then ``toml``, whose own sub-tables may follow."""
    lines = [f"{key} = {value}" for key, value in defaults.items()
             if not re.search(rf"(?m)^\s*{re.escape(key)}\s*=", toml)]
    return "\n".join([*lines, toml])


def run_cli(config: Path, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([TAUBE, *args, "--config", str(config)], input=stdin, capture_output=True,
                          text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"taube {' '.join(args)} failed: {proc.stderr}")
    return proc


class TaubeServer:
    """A taube process with its own config and data directory."""

    def __init__(self, root: Path, extra_toml: str = "", smtp_toml: str = "", domains=("example.test",),
                 trusted: tuple[str, ...] = ("127.0.0.0/8", "::1/128"), auth_toml: str = "",
                 submission: bool = False, smtps: bool = False, pop3: bool = False,
                 pop3s: bool = False, pop3_toml: str = "", host: str = "127.0.0.1",
                 port: int | None = None, workers: int = 1) -> None:
        self.root = root
        self.host = host
        self.port = port or free_port(host)
        self.submission_port = free_port() if submission else None
        self.smtps_port = free_port() if smtps else None
        self.pop3_port = free_port() if pop3 else None
        self.pop3s_port = free_port() if pop3s else None
        self.config = root / "taube.toml"
        self.data_dir = root / "var"
        self.log_path = root / "taube.log"
        self.proc: subprocess.Popen[bytes] | None = None
        if "[delivery" not in extra_toml and "[dns" not in extra_toml:
            # Tests that do not deliver: remote mail goes to a closed loopback port and waits
            # in the queue (deferred), never to the internet's DNS and MX hosts.
            extra_toml += f'\n[delivery]\nrelayhost = "[127.0.0.1]:{free_port()}"\n'
        if "[server]" not in extra_toml:  # one process unless a test asks for workers
            extra_toml += f"\n[server]\nworkers = {workers}\n"
        domain_list = ", ".join(f'"{d}"' for d in domains)
        trusted_list = ", ".join(f'"{n}"' for n in trusted)
        self.config.write_text(
            f'hostname = "mail.example.test"\n'
            f'data_dir = "var"\n'
            f"domains = [{domain_list}]\n"
            f"trusted_networks = [{trusted_list}]\n"
            f"{extra_toml}\n"
            f"[smtp]\n"
            f'listen = ["{host}:{self.port}"]\n'
            # no greeting delay for untrusted test clients unless a test asks for one
            f"{with_defaults(smtp_toml, greet_delay=0)}\n"
            f"[submission]\n"
            f"listen = [{_listen(self.submission_port)}]\n"
            f"[smtps]\n"
            f"listen = [{_listen(self.smtps_port)}]\n"
            f"[pop3]\n"
            f"listen = [{_listen(self.pop3_port)}]\n"
            f"{pop3_toml}\n"
            f"[pop3s]\n"
            f"listen = [{_listen(self.pop3s_port)}]\n"
            f"[auth]\n"
            f"{with_defaults(auth_toml, failure_delay=0)}\n"
        )

    def cli(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(self.config, *args, stdin=stdin, check=check)

    def add_user(self, address: str, password: str = "secret-pw") -> None:
        self.cli("user", "add", address, stdin=password + "\n")

    def start(self) -> TaubeServer:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([TAUBE, "serve", "--config", str(self.config)],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(self._ready, what=f"taube on port {self.port} (log: {self.log})")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"taube exited with {self.proc.returncode}:\n{self.log}")
        try:
            # long enough for a greet_delay a test sets for untrusted clients
            with socket.create_connection((self.host, self.port), timeout=5) as s:
                return s.recv(512).startswith(b"220 ")
        except OSError:
            return False

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = DEADLINE) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError("taube did not stop in time") from None
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def maildir(self, address: str) -> Path:
        local, domain = address.lower().split("@")
        return self.data_dir / "mail" / domain / local


@pytest.fixture
def tmp_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="taube-e2e-") as d:
        yield Path(d)


@pytest.fixture
def make_server(tmp_root: Path) -> Iterator:
    servers: list[TaubeServer] = []
    counter = iter(range(1000))

    def factory(**kwargs) -> TaubeServer:
        root = tmp_root / f"s{next(counter)}"
        root.mkdir()
        server = TaubeServer(root, **kwargs)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        try:
            server.stop()
        except AssertionError:
            pass


@pytest.fixture
def server(make_server) -> TaubeServer:
    """A running server for example.test with users alice and bob, trusting loopback."""
    s = make_server()
    s.add_user("alice@example.test")
    s.add_user("bob@example.test")
    return s.start()


def env_without_config() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TAUBE_CONFIG", None)
    return env
