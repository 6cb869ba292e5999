"""A clock for tests: a callable that returns ``now``, which the test moves by hand."""

from __future__ import annotations

__all__ = ["Clock"]


class Clock:
    """Seconds, ``start`` by default a wall-clock time (2027), for state that outlives a
    process and is kept in wall-clock seconds."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
