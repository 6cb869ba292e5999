"""What every sans-I/O protocol engine shares: the "need more bytes" marker and the error for
misuse of an engine's API (as opposed to a peer's mistake, which is always a reply)."""

from __future__ import annotations

from typing import Final

__all__ = ["NEED_DATA", "LocalProtocolError", "NeedData"]


class LocalProtocolError(Exception):
    """The caller misused the engine (answered twice, forgot to answer, ...)."""


class NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()
