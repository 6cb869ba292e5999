"""The ``taube`` command: run the server, manage domains, users and aliases, inspect the queue.

Every command takes ``--config FILE`` (else ``$TAUBE_CONFIG``, else ``./taube.toml``, else the
built-in defaults). Errors are one message on standard error: exit status 1 for a refused
operation, 2 for a configuration that cannot be used (and for usage errors, as click does).

Each command group is a module of this package, registered below with one ``add_command`` line;
what the groups share (``--config``, the directory, tables, error messages) is in ``common``.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..config import load_settings
from . import aliases, dkim, domains, queue, users
from .common import MessageGroup, config_option

__all__ = ["main"]


@click.group(cls=MessageGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="taube")
def main() -> None:
    """taube: a mail server (SMTP in, Maildir delivery)."""


@main.command()
@config_option
@click.pass_context
def serve(ctx: click.Context, config: Path | None) -> None:
    """Run the server in the foreground; logs go to standard error."""
    settings = load_settings(config)
    from ..app import serve as run_server  # the server's imports are not needed by the other commands

    ctx.exit(run_server(settings))


main.add_command(users.user)
main.add_command(domains.domain)
main.add_command(aliases.alias)
main.add_command(queue.queue)
main.add_command(dkim.dkim)
