"""The real server (``taube.app.App``) inside the test process, on an event loop in a thread.

The same listeners, sessions and spool as ``taube serve``, talked to over real sockets with
smtplib and poplib, but in this process, so that a test can replace the durable-write seam
(:mod:`tests.faults`) under the running server. Signals are not delivered by the OS here (only
the main thread may install handlers): the loop records the handlers the app asks for and
:meth:`InProcessServer.signal` calls them, as the kernel would.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from taube.app import App
from taube.config import load_settings
from tests.e2e.conftest import DEADLINE, TaubeServer, wait_for

__all__ = ["InProcessServer"]


class _SignalLoop(asyncio.SelectorEventLoop):
    """An event loop that keeps signal handlers instead of installing them."""

    def __init__(self) -> None:
        super().__init__()
        self.handlers: dict[int, Callable[[], object]] = {}

    def add_signal_handler(self, sig: int, callback: Callable[..., object], *args: object) -> None:
        self.handlers[sig] = lambda: callback(*args)

    def remove_signal_handler(self, sig: int) -> bool:
        return self.handlers.pop(sig, None) is not None


class InProcessServer:
    """``App`` for the configuration a :class:`TaubeServer` wrote (ports, data directory, users
    added with its CLI). ``runner=False``: no queue runner (remote mail stays queued and
    nothing but the sessions writes while a test counts write points)."""

    def __init__(self, config: TaubeServer, *, runner: bool = True) -> None:
        self.config = config
        self.port = config.port
        self.pop3_port = config.pop3_port
        self.data_dir = config.data_dir
        self._runner = runner
        self.loop: _SignalLoop | None = None
        self.app: App | None = None
        self._thread: threading.Thread | None = None
        self.exit_code: int | None = None
        self.error: BaseException | None = None

    def start(self) -> InProcessServer:
        self.loop = _SignalLoop()
        self.app = App(load_settings(self.config.config))
        if not self._runner:
            self.app.services.runner = None
        self._thread = threading.Thread(target=self._run, name="taube-in-process", daemon=True)
        self._thread.start()
        wait_for(self._ready, what=f"in-process taube on port {self.port}")
        return self

    def _run(self) -> None:
        assert self.loop is not None and self.app is not None
        asyncio.set_event_loop(self.loop)
        try:
            self.exit_code = self.loop.run_until_complete(self.app.run())
        except BaseException as e:  # reported by stop()
            self.error = e
        finally:
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()

    def _ready(self) -> bool:
        if self._thread is not None and not self._thread.is_alive():
            raise AssertionError(f"the in-process server ended: {self.error!r}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                return s.recv(512).startswith(b"220 ")
        except OSError:
            return False

    def signal(self, sig: int) -> None:
        """What the kernel would do with ``sig``: run the app's handler on its loop."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.loop.handlers[sig])

    def stop(self) -> None:
        if self._thread is None:
            return
        if self.loop is not None and not self.loop.is_closed():
            self.signal(signal.SIGTERM)
        self._thread.join(DEADLINE)
        alive = self._thread.is_alive()
        self._thread = None
        if alive:
            raise AssertionError("the in-process server did not stop in time")
        if self.error is not None:
            raise AssertionError(f"the in-process server failed: {self.error!r}") from self.error

    def maildir(self, address: str) -> Path:
        return self.config.maildir(address)

    def __enter__(self) -> InProcessServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
