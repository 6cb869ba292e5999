"""The SMTP servers under test: start one on a free loopback port, count what it stored, stop it.

Every server lives in a work directory of its own that the caller creates and removes. Only
processes started here are ever signalled, by their PID.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from postfix_instance import PostfixInstance
from procstats import Memory, tree_cpu_seconds, tree_memory

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
VENV_BIN = REPO_DIR / ".venv" / "bin"
DOMAIN = "bench.test"
USER = "user"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


class ServerUnavailable(Exception):
    """The server cannot be run here; the message says why."""


class Server(Protocol):
    name: str
    port: int
    log: Path
    delivers_later: bool  # acknowledges before the message reaches the Maildir

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def stored_count(self) -> int | None:
        """Messages in the Maildir's ``new/``, or None for a server that stores nothing."""
        ...

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system, all threads, child processes included) the server has used
        so far, if known."""
        ...

    def memory(self) -> Memory | None:
        """Resident memory of the server's processes, if known."""
        ...


def spawn(command: list[str], log_path: Path, cwd: Path, *, append: bool = False,
          pipe_stdout: bool = False, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a server with its output in ``log_path``; ServerUnavailable if it cannot run.

    With ``pipe_stdout`` only its standard error goes to the log; the caller reads its standard
    output from ``process.stdout``. ``env`` is added to the bench's own environment.
    """
    with log_path.open("ab" if append else "wb") as log:
        try:
            return subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE if pipe_stdout else log,
                                    stderr=log if pipe_stdout else subprocess.STDOUT, cwd=cwd,
                                    env=None if env is None else os.environ | env)
        except OSError as exc:
            raise ServerUnavailable(f"cannot run {command[0]}: {exc}") from exc


def sbin_tool(name: str) -> str:
    """Where a Postfix or Dovecot program is: on the PATH, else in /usr/sbin (may not exist)."""
    return shutil.which(name) or f"/usr/sbin/{name}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def count_files(folder: Path) -> int:
    try:
        with os.scandir(folder) as entries:
            return sum(1 for entry in entries if entry.is_file(follow_symlinks=False))
    except FileNotFoundError:
        return 0


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def greeting_ok(port: int, greeting: bytes = b"220") -> bool:
    """True once the server accepts a connection and greets with ``greeting`` (SMTP's 220,
    POP3's +OK); the probe then says QUIT."""
    try:
        with socket.create_connection((HOST, port), timeout=2.0) as sock:
            line = sock.makefile("rb").readline()
            if not line.startswith(greeting):
                return False
            sock.sendall(b"QUIT\r\n")
            return True
    except OSError:
        return False


def wait_ready(port: int, deadline: float, process: subprocess.Popen[bytes] | None,
               log: Path, greeting: bytes = b"220") -> None:
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log_tail(log)
            raise ServerUnavailable(f"exited with status {process.returncode}: "
                                    f"{tail.splitlines()[-1] if tail else 'no output'}\n{tail}")
        if greeting_ok(port, greeting):
            return
        time.sleep(0.05)
    raise ServerUnavailable(f"no {greeting.decode()} greeting on {HOST}:{port} within "
                            f"{START_TIMEOUT:.0f} s:\n{log_tail(log)}")


def terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the PID we started, a bounded wait, SIGKILL only if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        print(f"warning: PID {process.pid} ignored SIGTERM; killing it", file=sys.stderr)
        process.kill()
        process.wait(STOP_TIMEOUT)


def run_taube(executable: Path, config: Path, cwd: Path, *args: str, stdin: bytes = b"") -> None:
    """``taube ARGS --config CONFIG`` to completion; ServerUnavailable if it fails."""
    command = [str(executable), *args, "--config", str(config)]
    try:
        done = subprocess.run(command, input=stdin, capture_output=True, cwd=cwd,
                              timeout=START_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ServerUnavailable(f"`taube {' '.join(args)}` did not finish") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace").strip()
        last_line = output.splitlines()[-1] if output else "no output"
        raise ServerUnavailable(f"`taube {' '.join(args)}` failed ({done.returncode}): "
                                f"{last_line}\n{output[-1500:]}")


class TreeStats:
    """CPU time and memory of all the processes below ``root_pid``."""

    @property
    def root_pid(self) -> int | None:
        raise NotImplementedError

    def cpu_seconds(self) -> float | None:
        pid = self.root_pid
        return None if pid is None else tree_cpu_seconds(pid)

    def memory(self) -> Memory | None:
        pid = self.root_pid
        return None if pid is None else tree_memory(pid)


class ProcessServer(TreeStats):
    """A server that is one child process (with its own children, if any), stopped with
    SIGTERM."""

    name = "process"
    delivers_later = False
    greeting = b"220"  # what its readiness probe waits for
    append_log = False  # keep what prepare() wrote to the log
    pipe_stdout = False  # standard output to process.stdout, only standard error to the log

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log = workdir / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}  # added to the process's environment

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Writes configuration and data before the process starts."""

    def maildir_new(self) -> Path | None:
        return None

    def start(self) -> None:
        self.prepare()
        self.process = spawn(self.command(), self.log, self.workdir, append=self.append_log,
                             pipe_stdout=self.pipe_stdout, env=self.env)
        self.started()
        try:
            wait_ready(self.port, time.monotonic() + START_TIMEOUT, self.process, self.log,
                       self.greeting)
        except ServerUnavailable:
            self.stop()
            raise

    def started(self) -> None:
        """Called once the process is running, before waiting for its greeting."""

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)

    def stored_count(self) -> int | None:
        folder = self.maildir_new()
        return None if folder is None else count_files(folder)

    @property
    def root_pid(self) -> int | None:
        """The PID at the top of the server's processes (one we started)."""
        return None if self.process is None else self.process.pid



@dataclass(frozen=True)
class Variant:
    """How taube is run: its event loop (``TAUBE_EVENT_LOOP``) and ``[server] workers`` (None:
    the key is not written, for a taube that does not know it)."""

    loop: str = "uvloop"
    workers: int | None = None

    @property
    def name(self) -> str:
        return f"taube-{self.loop}" + (f"-w{self.workers}" if self.workers else "")

    def apply(self, server: ProcessServer) -> ProcessServer:
        server.name = self.name
        server.workers = self.workers  # type: ignore[attr-defined]
        server.env["TAUBE_EVENT_LOOP"] = self.loop
        return server


def taube_knows_workers() -> bool:
    """Whether the installed taube has ``[server] workers``."""
    probe = ("import taube.config as c; s = getattr(c, 'ServerSettings', None); "
             "print(bool(s) and 'workers' in s.model_fields)")
    try:
        done = subprocess.run([str(VENV_BIN / "python"), "-c", probe], capture_output=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.stdout.strip() == b"True"


def uvloop_version() -> str | None:
    """uvloop's version in the venv taube runs from, or None if it is not installed there."""
    try:
        done = subprocess.run([str(VENV_BIN / "python"), "-c",
                               "import uvloop; print(uvloop.__version__)"],
                              capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.decode().strip() or None


def server_section(workers: int | None) -> str:
    """``[server] workers``, unless None (then taube's default, for a taube without the key)."""
    return "" if workers is None else f"[server]\nworkers = {workers}\n"


def logged_event_loop(log: Path) -> str | None:
    """The loop a taube server said it runs (``event loop: ...`` in its log)."""
    try:
        for line in log.read_text(errors="replace").splitlines():
            if "event loop: " in line:
                return line.split("event loop: ", 1)[1].strip()
    except FileNotFoundError:
        pass
    return None


class TaubeServer(ProcessServer):
    """``taube serve`` with [smtp] on the port, delivering ``users`` of ``domain`` locally."""

    name = "taube"
    executable = VENV_BIN / "taube"
    domain = DOMAIN
    users: tuple[str, ...] = (USER,)  # added with `taube user add`
    workers: int | None = None  # [server] workers, when set
    max_connections = 500  # in total and per client

    @property
    def config(self) -> Path:
        return self.workdir / "taube.toml"

    def command(self) -> list[str]:
        return [str(self.executable), "serve", "--config", str(self.config)]

    def config_text(self) -> str:
        return (f'hostname = "{self.domain}"\n'
                'data_dir = "var"\n'
                f'domains = ["{self.domain}"]\n'
                'trusted_networks = ["127.0.0.0/8"]\n'
                "[smtp]\n"
                f'listen = ["{HOST}:{self.port}"]\n'
                f"max_connections = {self.max_connections}\n"
                f"max_connections_per_client = {self.max_connections}\n")

    def other_sections(self) -> str:
        """After [smtp]: the other listeners off, so that their default ports (2587, 2465,
        2110, 2995), which a taube running on the machine may hold, are never bound."""
        return ("[submission]\nlisten = []\n[smtps]\nlisten = []\n"
                "[pop3]\nlisten = []\n[pop3s]\nlisten = []\n")

    def event_loop(self) -> str | None:
        return logged_event_loop(self.log)

    def prepare(self) -> None:
        if not self.executable.exists():
            raise ServerUnavailable(f"{self.executable} is not installed")
        self.config.write_text(self.config_text() + self.other_sections()
                               + server_section(self.workers))
        for user in self.users:
            run_taube(self.executable, self.config, self.workdir, "user", "add",
                      f"{user}@{self.domain}", stdin=b"bench-password\n")

    def maildir_new(self) -> Path:
        return self.workdir / "var" / "mail" / self.domain / USER / "new"


class AiosmtpdServer(ProcessServer):
    name = "aiosmtpd"

    def command(self) -> list[str]:
        return [str(VENV_BIN / "python"), str(BENCH_DIR / "aiosmtpd_maildir.py"),
                "--host", HOST, "--port", str(self.port),
                "--maildir", str(self.workdir / "Maildir")]

    def maildir_new(self) -> Path:
        return self.workdir / "Maildir" / "new"


class SmtpSinkServer(ProcessServer):
    """Postfix's smtp-sink: speaks SMTP (with PIPELINING) and throws every message away."""

    name = "smtp-sink"
    backlog = 1024
    options: tuple[str, ...] = ()

    def command(self) -> list[str]:
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        return [sbin_tool("smtp-sink"), *user, *self.options, f"{HOST}:{self.port}",
                str(self.backlog)]

    def prepare(self) -> None:
        if not Path(self.command()[0]).exists():
            raise ServerUnavailable("smtp-sink is not installed (bash bench/install-peers.sh)")


class PostfixServer(TreeStats):
    """A private Postfix instance; acknowledges after its queue fsync, delivers afterwards.

    With ``relayhost`` (``[127.0.0.1]:PORT``) it relays everything not for ``domain`` there.
    """

    name = "postfix"
    delivers_later = True

    def __init__(self, workdir: Path, domain: str = DOMAIN, relayhost: str | None = None,
                 settings: dict[str, object] | None = None) -> None:
        self.port = free_port()
        self.instance = PostfixInstance(workdir, HOST, self.port, domain, USER,
                                        delivery_user=pwd.getpwnam("nobody"),
                                        relayhost=relayhost, settings=settings)
        self.log = self.instance.log

    def start(self) -> None:
        try:
            self.instance.start(START_TIMEOUT)
        except RuntimeError as exc:
            raise ServerUnavailable(str(exc)) from exc
        try:
            wait_ready(self.port, time.monotonic() + START_TIMEOUT, None, self.instance.log)
        except ServerUnavailable:
            self.stop()
            raise

    def stop(self) -> None:
        self.instance.stop(STOP_TIMEOUT)

    def stored_count(self) -> int:
        return count_files(self.instance.maildir_new)

    def queued_count(self) -> int:
        """Messages still in its queue."""
        return self.instance.queued_count()

    @property
    def root_pid(self) -> int | None:
        """Postfix's master (from its pid file): it starts and reaps every other process."""
        return self.instance.master_pid()



SERVERS: dict[str, type[ProcessServer] | type[PostfixServer]] = {
    "taube": TaubeServer,
    "aiosmtpd": AiosmtpdServer,
    "smtp-sink": SmtpSinkServer,
    "postfix": PostfixServer,
}
