"""The CLI's requests to the queue runner: ``<data_dir>/queue/requests/*.json``.

``taube queue flush`` and ``taube queue retry`` leave one small JSON file each and wake the
server with SIGUSR1; the runner reads the files at its next full scan, applies them and removes
them. A request is written whole and fsync'd, then renamed into place (store/durable.py), so the
runner never reads half of one; when no server runs, the files wait for its next start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ..store import durable

__all__ = ["REQUESTS", "pending", "request_path", "write_request"]

log = logging.getLogger("taube.delivery")

REQUESTS = "requests"


def request_path(data_dir: Path) -> Path:
    """Where ``taube queue flush/retry`` leave their requests for the running server."""
    return data_dir / "queue" / REQUESTS


def write_request(data_dir: Path, request: dict[str, object]) -> Path:
    """Leave ``request`` for the runner; the file's path."""
    directory = request_path(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns()}-{os.getpid()}"
    final = directory / f"{name}.json"
    durable.replace_file(final, json.dumps(request).encode("utf-8"), staged=directory / f"{name}.tmp")
    return final


def pending(directory: Path) -> Iterator[tuple[str, dict[str, object]]]:
    """The requests waiting in ``directory``, oldest first, as (file name, request); each file
    is removed once the caller has taken its request (or at once, if it cannot be read)."""
    try:
        paths = sorted(directory.iterdir())
    except FileNotFoundError:
        return
    for path in paths:
        if path.suffix != ".json":
            continue
        try:
            request = json.loads(path.read_bytes())
            if not isinstance(request, dict):
                raise ValueError("not a JSON object")
        except (ValueError, OSError) as e:
            log.warning("queue request %s ignored: %s", path.name, e)
        else:
            yield path.name, request
        with contextlib.suppress(OSError):
            path.unlink()
