"""Which event loop runs the server: uvloop when it is installed, else the standard library's.

uvloop (libuv under asyncio's interfaces) makes each socket read, write and callback cheaper;
the server's code is the same on both loops, so it is optional: ``pip install 'taube[fast]'``
(``make run`` and ``make bench`` install it). ``TAUBE_EVENT_LOOP`` chooses:

- unset, empty or ``auto``: uvloop if it can be imported, else asyncio;
- ``uvloop``: uvloop, and an error if it is not installed (a test run that asks for uvloop must
  not quietly run on the other loop);
- ``asyncio``: the standard library's loop even when uvloop is installed.

The choice is logged once at start, so a log (and a benchmark's conditions) says which loop ran.

``TAUBE_CPROFILE=DIR`` runs the loop under cProfile and leaves ``DIR/taube-PID.pstats`` when the
process exits: the fallback of ``bench/ --profile`` where py-spy cannot be installed (it sees
only the loop's own thread, not the commit threads).
"""

from __future__ import annotations

import asyncio
import cProfile
import importlib
import logging
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["ENV", "PROFILE_ENV", "EventLoopUnavailable", "choose", "run"]

log = logging.getLogger("taube.loop")
ENV = "TAUBE_EVENT_LOOP"
PROFILE_ENV = "TAUBE_CPROFILE"
CHOICES = ("auto", "uvloop", "asyncio")

T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class EventLoopUnavailable(RuntimeError):
    """``TAUBE_EVENT_LOOP`` names a loop that cannot run here, or no loop at all."""


def choose(setting: str | None = None) -> tuple[str, LoopFactory | None]:
    """The loop's name and its factory (None: asyncio's default) for ``setting``, which is
    ``$TAUBE_EVENT_LOOP`` unless given."""
    wanted = (os.environ.get(ENV, "") if setting is None else setting).strip().lower() or "auto"
    if wanted not in CHOICES:
        raise EventLoopUnavailable(f"{ENV}={wanted!r}: choose one of {', '.join(CHOICES)}")
    if wanted == "asyncio":
        return "asyncio", None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError as e:
        if wanted == "uvloop":
            raise EventLoopUnavailable(f"{ENV}=uvloop, but uvloop cannot be imported ({e}); "
                                       "install it with: pip install 'taube[fast]'") from e
        return "asyncio", None
    return f"uvloop {uvloop.__version__}", uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], setting: str | None = None) -> T:
    """Runs ``main`` to completion on the chosen loop, as ``asyncio.run`` does (a new loop,
    closed afterwards with its async generators and default executor shut down)."""
    try:
        name, factory = choose(setting)
    except EventLoopUnavailable:
        main.close()  # never started: no "coroutine was never awaited" warning on the way out
        raise
    log.info("event loop: %s", name)
    profile_dir = os.environ.get(PROFILE_ENV)
    with asyncio.Runner(loop_factory=factory) as runner:
        if not profile_dir:
            return runner.run(main)
        profiler = cProfile.Profile()
        try:
            return profiler.runcall(runner.run, main)
        finally:
            target = Path(profile_dir) / f"taube-{os.getpid()}.pstats"
            profiler.dump_stats(target)
            log.info("profile written to %s", target)
