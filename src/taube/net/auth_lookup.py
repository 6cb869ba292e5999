"""The directory look-ups behind a login, one path for SMTP AUTH and POP3 (USER/PASS, APOP, SASL).

Every look-up may block (SQLite; argon2 takes tens of milliseconds), so each runs in a worker
thread: a slow directory delays only the session that asked, never the others on the loop.
"""

from __future__ import annotations

import asyncio

from ..directory.base import Directory
from ..proto import sasl

__all__ = ["Request", "resolve"]

# USER/PASS is a CheckPassword, APOP a NeedSecret: the same requests as the SASL mechanisms'
Request = sasl.CheckPassword | sasl.NeedScram | sasl.NeedSecret


def _lookup(directory: Directory, request: Request) -> object:
    if isinstance(request, sasl.CheckPassword):
        return directory.verify_password(request.authcid, request.password)
    if isinstance(request, sasl.NeedScram):
        return directory.scram_credentials(request.username)
    return directory.legacy_secret(request.username)  # CRAM-MD5, APOP: only with legacy_secrets


async def resolve(directory: Directory, request: Request) -> object:
    """The answer to ``request``, in a worker thread: a bool for
    :class:`~taube.proto.sasl.CheckPassword`, the SCRAM keys or the plaintext-equivalent secret
    (None for unknown users) for the others, as ``auth_resolve()`` of both engines takes it."""
    return await asyncio.get_running_loop().run_in_executor(None, _lookup, directory, request)
