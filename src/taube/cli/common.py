"""What every ``taube`` command shares: ``--config``, the directory, tables, errors as messages.

Errors are one message on standard error: exit status 1 for a refused operation, 2 for a
configuration that cannot be used (and for usage errors, as click does).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..config import ConfigError, Settings, load_settings
from ..directory.base import DirectoryError
from ..directory.sqlite import SQLiteDirectory

if TYPE_CHECKING:
    from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])


class Failure(click.ClickException):
    """A refused operation, shown as ``taube: <message>``; exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"taube: {self.format_message()}", err=True)


class ConfigFailure(Failure):
    """A configuration that cannot be used; exit status 2."""

    exit_code = 2


class MessageGroup(click.Group):
    """The top-level group: turns the errors an administrator can cause into messages."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as e:
            raise ConfigFailure(str(e)) from None
        except DirectoryError as e:
            raise Failure(str(e)) from None


def config_option(command: F) -> F:
    """``--config FILE``, which every command takes; None leaves the choice to ``load_settings``."""
    return click.option(
        "--config", "config", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path),
        help="Configuration file (default: $TAUBE_CONFIG, else ./taube.toml).",
    )(command)


def open_directory(settings: Settings) -> SQLiteDirectory:
    """The user directory of ``settings`` (``<data_dir>/taube.db``), to be used as a context."""
    return SQLiteDirectory(settings.data_dir / "taube.db", settings.domains,
                           legacy_secrets=settings.auth.legacy_secrets)


def edit(config: Path | None, change: Callable[[SQLiteDirectory], object], done: str) -> None:
    """Apply ``change`` to the directory of the configuration, then say ``done``."""
    with open_directory(load_settings(config)) as directory:
        change(directory)
    click.echo(done)


def name_command(group: click.Group, name: str, *, argument: str, metavar: str | None = None,
                 help: str, change: Callable[[SQLiteDirectory, str], object],
                 done: str) -> None:
    """Add ``GROUP NAME ARGUMENT [--config FILE]`` to ``group``: one change to the directory for
    one name (an address, a domain, an alias), then ``done`` with the name in lower case, as the
    directory keeps it, in place of its ``{}``."""

    @group.command(name, help=help)
    @click.argument(argument, metavar=metavar)
    @config_option
    def command(config: Path | None, **arguments: str) -> None:
        value = arguments[argument]
        edit(config, lambda directory: change(directory, value), done.format(value.lower()))


def list_directory(config: Path | None, headers: Sequence[str],
                   rows: Callable[[SQLiteDirectory, Settings], Iterable[Sequence[str]]]) -> None:
    """Print the ``rows`` read from the directory of the configuration (see print_rows)."""
    settings = load_settings(config)
    with open_directory(settings) as directory:
        table = list(rows(directory, settings))
    print_rows(headers, table)


def console() -> Console:
    """A rich console for standard output; rich is imported only here, on a terminal, since
    every command would otherwise pay for the import."""
    from rich.console import Console

    return Console()


def print_rows(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """A table on a terminal; tab-separated lines without a header otherwise (for scripts)."""
    if not sys.stdout.isatty():
        for row in rows:
            click.echo("\t".join(row))
        return
    from rich.table import Table

    table = Table(*headers)
    for row in rows:
        table.add_row(*row)
    console().print(table)
