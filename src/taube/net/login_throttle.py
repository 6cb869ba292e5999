"""Failed logins, one rule for SMTP AUTH and POP3: a penalty per client address, then a block.

Each failure is answered ``failure_delay`` x (the address's failures within ``failure_window``
when the attempt arrived, plus one) after the attempt *arrived* (capped at
:data:`MAX_PENALTY`); ``max_failures`` within the window block the address for the window.

The penalty is fixed by what was known when the credentials arrived, never by when their
verification finished. Counting failures as verifications finished ranked attempts that arrived
together by which argon2 run happened to end first, and turned differences of milliseconds into
whole ``failure_delay`` steps: the reply time then told attempts apart. Now attempts that arrive
together are answered together, whether the user exists or not (unknown users are verified
against ``DUMMY_HASH`` at the same cost and get the same reply text), and the reply waits for the
deadline even when the verification was quicker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..config import AuthSettings
from .auth_lookup import Request, resolve
from .services import Services

__all__ = ["MAX_PENALTY", "LoginThrottle"]

MAX_PENALTY = 30.0  # seconds: a client's timeout is usually longer (RFC 5321 4.5.3.2: minutes)


@dataclass(frozen=True, slots=True)
class _Attempt:
    arrived: float  # when the bytes carrying the credentials were read
    prior: int  # the address's failures within the window at that moment


class LoginThrottle:
    """The login attempts of one connection. The session calls :meth:`input` whenever it reads
    bytes, :meth:`lookup` (or :meth:`arrived`) when credentials are about to be checked, then
    :meth:`failed` or :meth:`succeeded`. ``clock`` (monotonic) times only this connection's penalty; the
    failures themselves are counted by the shared state on its own clock."""

    def __init__(self, services: Services, client_ip: str,
                 clock: Callable[[], float] = time.monotonic, *, auth: AuthSettings | None = None) -> None:
        """``auth``: the ``[auth]`` section to apply (default: that of ``services.settings``)."""
        self.services = services
        self.auth = auth if auth is not None else services.settings.auth
        self.client_ip = client_ip
        self._clock = clock
        self._input_at = clock()
        self._attempt: _Attempt | None = None

    def input(self) -> None:
        """Bytes were read just now: a later attempt is a new one, arriving now."""
        self._input_at = self._clock()
        self._attempt = None

    def blocked(self) -> bool:
        auth = self.auth
        return self.services.state.auth_blocked(self.client_ip, auth.failure_window, auth.max_failures)

    def arrived(self) -> None:
        """Credentials from the last input are being checked (first call per input counts)."""
        if self._attempt is None:
            auth = self.auth
            # the failures within the window as it stood when the input arrived: the window
            # widened by the time since (a duration, so the shared state's clock may differ)
            since = max(0.0, self._clock() - self._input_at)
            prior = self.services.state.auth_failures(self.client_ip, auth.failure_window + since)
            self._attempt = _Attempt(self._input_at, prior)

    async def lookup(self, request: Request) -> object:
        """The attempt has arrived (:meth:`arrived`); the directory's answer to ``request``,
        looked up off the event loop (:mod:`.auth_lookup`): the one path of SMTP and POP3."""
        self.arrived()
        return await resolve(self.services.directory, request)

    def succeeded(self) -> None:
        self._attempt = None
        self.services.state.auth_succeeded(self.client_ip)

    def failed(self) -> tuple[int, float]:
        """Record the failure: the address's failures within the window, and the seconds to
        wait before the reply (the attempt's deadline minus now)."""
        self.arrived()
        attempt, self._attempt = self._attempt, None
        assert attempt is not None
        auth = self.auth
        now = self._clock()
        failures = self.services.state.auth_failed(self.client_ip, auth.failure_window)
        deadline = attempt.arrived + min(auth.failure_delay * (attempt.prior + 1), MAX_PENALTY)
        return failures, max(0.0, deadline - now)
