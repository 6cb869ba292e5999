"""One worker process: ``python -m taube.server.worker``, started by the supervisor.

The worker runs the same :class:`~taube.app.App` as a single-process server, with its own event
loop, directory connection, spool, TLS context and shared-state handle, on listening sockets it
inherits from the supervisor (``--listen service=fd``, one per listen address). It does not bind,
recover the queue, run the queue runner or write the pid file: the supervisor does those once.
Its queue requests go to the runner as datagrams (``--requests-fd``, server/channel.py).

The settings arrive as JSON on standard input, as the supervisor holds them: a worker restarted
after the file was edited without SIGHUP serves with the configuration the others run, and a
file broken in the meantime cannot keep it from starting. SIGHUP (forwarded by the supervisor)
re-reads the file, SIGTERM drains and stops, as in a single process. Once every listener
accepts the worker writes ``ready`` to ``--ready-fd``. A worker whose supervisor is gone (it
is re-parented) stops by itself, so a killed supervisor leaves no worker behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from ..app import LOG_FORMAT_WORKERS, App, WorkerRole
from ..config import Settings
from .sockets import parse_fd_spec

__all__ = ["READY", "main"]

log = logging.getLogger("taube.server")

READY = b"ready\n"
SUPERVISOR_CHECK = 1.0  # seconds between looks at whether the supervisor is still our parent


def _announce(fd: int) -> None:
    """Tell the supervisor this worker accepts connections (once; the pipe is closed after)."""
    with contextlib.suppress(OSError):
        os.write(fd, READY)
        os.close(fd)


async def _serve(settings: Settings, role: WorkerRole, supervisor: int) -> int:
    app = App(settings, role)
    watch = asyncio.create_task(_watch_supervisor(supervisor), name="supervisor watch")
    try:
        return await app.run()
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch


async def _watch_supervisor(supervisor: int) -> None:
    """Drain and stop, as on SIGTERM, once the supervisor is no longer our parent."""
    while os.getppid() == supervisor:
        await asyncio.sleep(SUPERVISOR_CHECK)
    log.warning("the supervisor (pid %d) is gone; stopping", supervisor)
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="taube.server.worker")
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--supervisor", type=int, required=True, help="the supervisor's pid")
    parser.add_argument("--listen", action="append", default=[], help="service=fd, inherited")
    parser.add_argument("--requests-fd", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--config", type=Path, help="the file SIGHUP re-reads")
    args = parser.parse_args(argv)
    settings = Settings.model_validate_json(sys.stdin.buffer.read())
    settings = settings.model_copy(update={"source": args.config})
    logging.basicConfig(level=settings.log.level.upper(), format=LOG_FORMAT_WORKERS, stream=sys.stderr)
    role = WorkerRole(slot=args.slot, sockets=parse_fd_spec(args.listen),
                      requests=socket.socket(fileno=args.requests_fd),
                      ready=lambda: _announce(args.ready_fd))
    from ..loop import run  # uvloop when installed, as the supervisor chose

    return run(_serve(settings, role, args.supervisor))


if __name__ == "__main__":
    sys.exit(main())
