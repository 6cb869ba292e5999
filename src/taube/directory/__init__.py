"""Users, domains and aliases (:mod:`.sqlite`), passwords (:mod:`.passwords`) and recipient
resolution (:mod:`.resolve`)."""

from .base import Directory, DirectoryError
from .resolve import Resolution, resolve_recipient
from .sqlite import SQLiteDirectory

__all__ = ["Directory", "DirectoryError", "Resolution", "SQLiteDirectory", "resolve_recipient"]
