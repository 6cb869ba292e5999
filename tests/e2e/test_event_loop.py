"""The server on either event loop: TAUBE_EVENT_LOOP reaches `taube serve`, which says which loop
runs, delivers, and stops cleanly; a loop that cannot run stops it with a message."""

from __future__ import annotations

import smtplib
import subprocess

import pytest

from .conftest import TAUBE, wait_for

LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(
    not __import__("importlib").util.find_spec("uvloop"), reason="uvloop is not installed"))]


@pytest.mark.parametrize("choice", LOOPS)
def test_serve_runs_on_the_chosen_loop(make_server, monkeypatch: pytest.MonkeyPatch,
                                       choice: str) -> None:
    monkeypatch.setenv("TAUBE_EVENT_LOOP", choice)  # the server process inherits it
    server = make_server()
    server.add_user("alice@example.test")
    server.start()
    assert f"event loop: {choice}" in server.log
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.sendmail("x@example.org", ["alice@example.test"], b"Subject: loop\r\n\r\nhi\r\n")
    new = server.maildir("alice@example.test") / "new"
    wait_for(lambda: any(new.iterdir()), what="the message in new/")
    assert server.stop() == 0


def test_an_unusable_loop_stops_serve_with_a_message(make_server) -> None:
    server = make_server()
    env = {"TAUBE_EVENT_LOOP": "no-such-loop", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([TAUBE, "serve", "--config", str(server.config)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "TAUBE_EVENT_LOOP='no-such-loop'" in done.stderr
