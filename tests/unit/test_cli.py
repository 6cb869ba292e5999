"""The ``taube`` command as an administrator runs it: a real process, a config file, stdin."""

from __future__ import annotations

import os
import pty
import select
import sys
import time
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from taube.cli import main
from taube.config import Settings
from taube.directory import SQLiteDirectory
from tests.unit.cli_helpers import TAUBE, run, write_config


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


def directory(config: Path) -> SQLiteDirectory:
    return SQLiteDirectory(config.parent / "var" / "taube.db", ["example.test"])


def test_user_lifecycle(config: Path) -> None:
    added = run(config, "user", "add", "Alice@Example.test", stdin="first secret\nignored\n")
    assert (added.returncode, added.stdout, added.stderr) == (0, "user alice@example.test added\n", "")
    assert run(config, "user", "passwd", "alice@example.test", stdin="second secret\r\n").returncode == 0
    with directory(config) as d:
        assert d.verify_password("alice@example.test", "second secret")
        assert not d.verify_password("alice@example.test", "first secret")
    # TAUBE_CONFIG names the file when --config is not given
    listed = run(None, "user", "list", "example.test", env={"TAUBE_CONFIG": str(config)})
    assert (listed.returncode, listed.stdout) == (0, "alice@example.test\n")
    assert run(config, "user", "del", "ALICE@example.test").returncode == 0
    with directory(config) as d:
        assert d.list_users() == []


def test_domains(config: Path) -> None:
    assert run(config, "domain", "add", "New.Test").returncode == 0
    listed = run(config, "domain", "list")
    assert listed.stdout == "example.test\tconfiguration\nnew.test\tdatabase\n"
    refused = run(config, "domain", "del", "example.test")
    assert refused.returncode == 1
    assert refused.stderr == "taube: example.test is set in the configuration file; remove it there\n"


def test_aliases(config: Path) -> None:
    added = run(config, "alias", "add", "team@example.test", "alice@example.test, Ext@remote.test",
                "bob@example.test")
    assert added.returncode == 0, added.stderr
    listed = run(config, "alias", "list")
    assert listed.stdout == "team@example.test\talice@example.test,Ext@remote.test,bob@example.test\n"
    assert run(config, "alias", "del", "team@example.test").returncode == 0
    with directory(config) as d:
        assert d.list_aliases() == []


@pytest.mark.parametrize(("args", "stdin", "status", "message"), [
    (["user", "add", "bob@remote.test"], "pw\n", 1, "remote.test is not a local domain"),
    (["serve", "--config", "/nonexistent/taube.toml"], "", 2, "cannot read configuration"),
])
def test_errors_are_one_line_on_stderr(config: Path, args: list[str], stdin: str, status: int,
                                       message: str) -> None:
    result = run(config if "--config" not in args else None, *args, stdin=stdin)
    assert result.returncode == status
    assert result.stdout == ""
    assert result.stderr.startswith("taube: ") and message in result.stderr
    assert len(result.stderr.splitlines()) == 1


def run_in_terminal(config: Path, *args: str, answers: tuple[str, ...] = ()) -> tuple[int, str]:
    """Run taube on a pseudo-terminal; type each answer after the next ``: `` prompt."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: taube with the terminal as stdin, stdout and stderr
        try:
            os.execv(sys.executable, [*TAUBE, *args, "--config", str(config)])
        finally:
            os._exit(127)
    output = b""
    try:
        for answer in answers:
            output += _read_until(fd, b": ")
            os.write(fd, answer.encode() + b"\n")
        output += _read_until(fd, None)
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def _read_until(fd: int, marker: bytes | None, timeout: float = 20.0) -> bytes:
    """Read from the terminal until ``marker`` has been seen, or to the end of the output."""
    data = b""
    deadline = time.monotonic() + timeout
    while marker is None or marker not in data:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"no prompt from taube: {data!r}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child has exited
            break
        if not chunk:
            break
        data += chunk
    return data


def test_terminal_prompts_twice_without_echo_and_lists_a_table(config: Path) -> None:
    status, output = run_in_terminal(config, "user", "add", "alice@example.test",
                                     answers=("typed secret", "typed secret"))
    assert status == 0, output
    assert "Password: " in output and "Repeat for confirmation: " in output
    assert "typed secret" not in output
    with directory(config) as d:
        assert d.verify_password("alice@example.test", "typed secret")
    status, output = run_in_terminal(config, "user", "list")
    assert status == 0
    assert "┏━" in output and "user" in output and "│ alice@example.test │" in output


# In-process from here on: the same code paths, without the start-up time of a process.

@pytest.mark.parametrize("args", [
    ["user", "list"],
    # with an empty standard input: the configuration is checked before the password is read
    ["user", "add", "bob@example.test"],
    ["domain", "del", "example.test"],
    ["queue", "list"],
])
def test_configuration_error_names_the_key(config: Path, args: list[str]) -> None:
    config.write_text('data_dir = "var"\n[smtp]\nmax_recipients = "many"\n')
    result = CliRunner().invoke(main, [*args, "--config", str(config)], input="")
    assert result.exit_code == 2
    assert result.stderr.startswith("taube: invalid configuration") and "smtp.max_recipients" in result.stderr


@pytest.mark.parametrize("stdin", ["", "\n", "\r\n"])
def test_empty_password_is_refused(config: Path, stdin: str) -> None:
    result = CliRunner().invoke(main, ["user", "add", "bob@example.test", "--config", str(config)],
                                input=stdin)
    assert result.exit_code == 1
    assert result.stderr == "taube: empty password (give it on standard input, one line)\n"
    with directory(config) as d:
        assert d.list_users() == []


def test_serve_runs_the_app_with_the_settings(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process: ``taube serve`` loads the settings, then hands over to ``taube.app.serve``."""
    seen: list[Settings] = []

    def serve(settings: Settings) -> int:
        seen.append(settings)
        return 3

    fake_app = types.ModuleType("taube.app")
    fake_app.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "taube.app", fake_app)
    result = CliRunner().invoke(main, ["serve", "--config", str(config)])
    assert result.exit_code == 3
    assert [s.data_dir for s in seen] == [config.parent.resolve() / "var"]
