"""taube.loop: which event loop runs the server, chosen by TAUBE_EVENT_LOOP."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from taube import loop


async def running_loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_asyncio_is_the_standard_librarys_loop(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="taube.loop")
    assert loop.choose("asyncio") == ("asyncio", None)
    kind = loop.run(running_loop_type(), "asyncio")
    assert kind.__module__.startswith("asyncio")
    assert "event loop: asyncio" in caplog.text


def test_the_environment_variable_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(loop.ENV, " AsyncIO ")
    assert loop.choose() == ("asyncio", None)
    assert loop.run(running_loop_type()).__module__.startswith("asyncio")


def test_uvloop_runs_when_asked_for_or_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    uvloop = pytest.importorskip("uvloop")
    for setting in ("uvloop", "auto", ""):
        name, factory = loop.choose(setting)
        assert name == f"uvloop {uvloop.__version__}"
        assert factory is uvloop.new_event_loop
    monkeypatch.delenv(loop.ENV, raising=False)
    assert loop.run(running_loop_type()) is uvloop.Loop


def test_without_uvloop_auto_falls_back_and_uvloop_is_an_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes `import uvloop` fail
    assert loop.choose("auto") == ("asyncio", None)
    with pytest.raises(loop.EventLoopUnavailable, match="taube\\[fast\\]"):
        loop.choose("uvloop")


def test_an_unknown_loop_is_refused_and_main_is_not_left_unawaited() -> None:
    main = running_loop_type()
    with pytest.raises(loop.EventLoopUnavailable, match="trio"):
        loop.run(main, "trio")
    assert main.cr_frame is None  # closed: no "never awaited" warning later


def test_run_returns_mains_result_and_closes_its_loop() -> None:
    seen: list[asyncio.AbstractEventLoop] = []

    async def main() -> int:
        seen.append(asyncio.get_running_loop())
        return 42

    assert loop.run(main(), "asyncio") == 42
    assert seen[0].is_closed()


def test_cprofile_switch_leaves_a_stats_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pstats

    monkeypatch.setenv(loop.PROFILE_ENV, str(tmp_path))

    async def main() -> str:
        await asyncio.sleep(0)
        return "done"

    assert loop.run(main(), "asyncio") == "done"
    (written,) = tmp_path.glob("taube-*.pstats")
    functions = {name for _, _, name in pstats.Stats(str(written)).stats}
    assert "main" in functions
