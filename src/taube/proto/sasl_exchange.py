"""One SASL exchange as both engines run it (SMTP AUTH, RFC 4954 4; POP3 AUTH, RFC 5034 4).

The rules, the same for both protocols:

* The exchange drives one :class:`~taube.proto.sasl.Mechanism`: :meth:`Exchange.start` with the
  decoded initial response (or None), :meth:`Exchange.respond` with each client line inside the
  exchange, :meth:`Exchange.resolve` with the session's answer to a look-up.
* Each call returns a :data:`~taube.proto.sasl.Step` or an :class:`Abandoned`; the engine only
  turns that into its own wording (``334``/``+`` challenges, look-up events, replies).
* A client line is ``*`` (cancel), base64 (``=`` for empty), or too long; nothing else runs the
  mechanism. :meth:`Exchange.abandon` ends it for a cause the engine found itself (a bare newline
  in the line, input without a line end).
* :attr:`Exchange.user` is the name the mechanism last looked up or authenticated, for the
  engine's failure events.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from . import sasl
from .buffer import TOO_LONG

__all__ = ["Abandoned", "Cause", "Exchange"]


class Cause(enum.Enum):
    """Why the client side ended an exchange before the mechanism did."""

    TOO_LONG = "too-long"  # a response over the line limit (RFC 4954 4: 12288 octets)
    CANCELLED = "cancelled"  # the client sent "*"
    BAD_BASE64 = "bad-base64"
    BARE_NEWLINE = "bare-newline"  # a bare CR or LF inside a CRLF line (SMTP only)
    OVERFLOW = "overflow"  # input without a line end beyond the hard limit: the engine closes


# The reason the engines report in their failure events (AuthDone, LoginFailed), per cause.
REASONS: Final[dict[Cause, str]] = {
    Cause.TOO_LONG: "response too long",
    Cause.CANCELLED: "cancelled by the client",
    Cause.BAD_BASE64: "bad base64",
    Cause.BARE_NEWLINE: "bare newline in the response",
    Cause.OVERFLOW: "response without line end too long",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Abandoned:
    """The exchange ended without the mechanism's verdict; ``reason`` is from :data:`REASONS`."""

    cause: Cause
    reason: str


Outcome = sasl.Step | Abandoned
LOOKUPS: Final = (sasl.CheckPassword, sasl.NeedSecret, sasl.NeedScram)


class Exchange:
    """The state of one AUTH exchange. See the module docstring."""

    def __init__(self, name: str, *, hostname: str) -> None:
        mechanism = sasl.create(name, hostname=hostname)
        if mechanism is None:
            raise ValueError(f"unknown SASL mechanism {name!r}")
        self.name = name
        self.user: str | None = None
        self.mechanism = mechanism

    def start(self, initial: bytes | None) -> sasl.Step:
        return self._track(self.mechanism.start(initial))

    def respond(self, line: bytes | object) -> Outcome:
        """A client line inside the exchange, without its line end (or TOO_LONG)."""
        if line is TOO_LONG:
            return self.abandon(Cause.TOO_LONG)
        assert isinstance(line, bytes)
        if line == b"*":
            return self.abandon(Cause.CANCELLED)
        data = sasl.decode_response(line.decode("ascii", "replace"))
        if data is None:
            return self.abandon(Cause.BAD_BASE64)
        return self._track(self.mechanism.respond(data))

    def resolve(self, answer: object) -> sasl.Step:
        return self._track(self.mechanism.resolve(answer))

    @staticmethod
    def abandon(cause: Cause) -> Abandoned:
        return Abandoned(cause=cause, reason=REASONS[cause])

    def _track(self, step: sasl.Step) -> sasl.Step:
        match step:
            case sasl.CheckPassword(authcid=user) | sasl.NeedSecret(username=user) | sasl.NeedScram(username=user):
                self.user = user
            case sasl.Success(authcid=user):
                self.user = user
        return step
