"""The ``taube`` command: run the server, manage domains, users and aliases.

Every command takes ``--config FILE`` (else ``$TAUBE_CONFIG``, else ``./taube.toml``, else the
built-in defaults). Errors are one message on standard error: exit status 1 for a refused
operation, 2 for a configuration that cannot be used (and for usage errors, as click does).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from .config import ConfigError, Settings, load_settings
from .directory.base import DirectoryError
from .directory.sqlite import SQLiteDirectory

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


class _Failure(click.ClickException):
    """A refused operation, shown as ``taube: <message>``; exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"taube: {self.format_message()}", err=True)


class _ConfigFailure(_Failure):
    """A configuration that cannot be used; exit status 2."""

    exit_code = 2


class _Group(click.Group):
    """The top-level group: turns the errors an administrator can cause into messages."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as e:
            raise _ConfigFailure(str(e)) from None
        except DirectoryError as e:
            raise _Failure(str(e)) from None


def _config_option(command: F) -> F:
    return click.option(
        "--config", "config", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path),
        help="Configuration file (default: $TAUBE_CONFIG, else ./taube.toml).",
    )(command)


def _directory(settings: Settings) -> SQLiteDirectory:
    return SQLiteDirectory(settings.data_dir / "taube.db", settings.domains,
                           legacy_secrets=settings.auth.legacy_secrets)


def _read_password() -> str:
    """The new password: prompted twice without echo on a terminal, else the first line of
    standard input (its line end removed, everything else kept)."""
    if sys.stdin.isatty():
        password: str = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        raise _Failure("empty password (give it on standard input, one line)")
    return password


def _print_rows(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """A table on a terminal; tab-separated lines without a header otherwise (for scripts)."""
    if not sys.stdout.isatty():
        for row in rows:
            click.echo("\t".join(row))
        return
    from rich.console import Console  # only here: every command would pay for the import
    from rich.table import Table

    table = Table(*headers)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="taube")
def main() -> None:
    """taube: a mail server (SMTP in, Maildir delivery)."""


@main.command()
@_config_option
@click.pass_context
def serve(ctx: click.Context, config: Path | None) -> None:
    """Run the server in the foreground; logs go to standard error."""
    settings = load_settings(config)
    from .app import serve as run_server  # the server's imports are not needed by the other commands

    ctx.exit(run_server(settings))


# -- users ------------------------------------------------------------------------------------

@main.group()
def user() -> None:
    """Users: mailboxes that can receive mail and log in."""


@user.command("add")
@click.argument("address")
@_config_option
def user_add(address: str, config: Path | None) -> None:
    """Add a user; the password is read from standard input."""
    with _directory(load_settings(config)) as directory:
        directory.add_user(address, _read_password())
    click.echo(f"user {address.lower()} added")


@user.command("del")
@click.argument("address")
@_config_option
def user_del(address: str, config: Path | None) -> None:
    """Remove a user (the Maildir stays on disk)."""
    with _directory(load_settings(config)) as directory:
        directory.del_user(address)
    click.echo(f"user {address.lower()} removed")


@user.command("list")
@click.argument("domain", required=False)
@_config_option
def user_list(domain: str | None, config: Path | None) -> None:
    """List users, all or those of DOMAIN."""
    with _directory(load_settings(config)) as directory:
        users = directory.list_users(domain)
    _print_rows(["user"], ([u] for u in users))


@user.command("passwd")
@click.argument("address")
@_config_option
def user_passwd(address: str, config: Path | None) -> None:
    """Set a user's password, read from standard input."""
    with _directory(load_settings(config)) as directory:
        directory.set_password(address, _read_password())
    click.echo(f"password of {address.lower()} changed")


# -- domains ----------------------------------------------------------------------------------

@main.group()
def domain() -> None:
    """Local domains beyond those of the configuration file."""


@domain.command("add")
@click.argument("name")
@_config_option
def domain_add(name: str, config: Path | None) -> None:
    """Add a local domain."""
    with _directory(load_settings(config)) as directory:
        directory.add_domain(name)
    click.echo(f"domain {name.lower()} added")


@domain.command("del")
@click.argument("name")
@_config_option
def domain_del(name: str, config: Path | None) -> None:
    """Remove a local domain that has no users or aliases left."""
    with _directory(load_settings(config)) as directory:
        directory.del_domain(name)
    click.echo(f"domain {name.lower()} removed")


@domain.command("list")
@_config_option
def domain_list(config: Path | None) -> None:
    """List the local domains and where each is defined."""
    settings = load_settings(config)
    with _directory(settings) as directory:
        domains = directory.list_domains()
    configured = set(settings.domains)
    _print_rows(["domain", "defined in"],
                ([d, "configuration" if d in configured else "database"] for d in domains))


# -- aliases ----------------------------------------------------------------------------------

@main.group()
def alias() -> None:
    """Aliases: addresses that forward to other addresses, local or remote."""


@alias.command("add")
@click.argument("name", metavar="ALIAS")
@click.argument("targets", metavar="TARGET[,TARGET...]", nargs=-1, required=True)
@_config_option
def alias_add(name: str, targets: tuple[str, ...], config: Path | None) -> None:
    """Add ALIAS (local@domain, or @domain for a catch-all) forwarding to the TARGETs."""
    addresses = [t.strip() for arg in targets for t in arg.split(",") if t.strip()]
    with _directory(load_settings(config)) as directory:
        directory.add_alias(name, addresses)
    click.echo(f"alias {name.lower()} added")


@alias.command("del")
@click.argument("name", metavar="ALIAS")
@_config_option
def alias_del(name: str, config: Path | None) -> None:
    """Remove an alias."""
    with _directory(load_settings(config)) as directory:
        directory.del_alias(name)
    click.echo(f"alias {name.lower()} removed")


@alias.command("list")
@_config_option
def alias_list(config: Path | None) -> None:
    """List the aliases and their targets."""
    with _directory(load_settings(config)) as directory:
        aliases = directory.list_aliases()
    _print_rows(["alias", "targets"], ([name, ",".join(targets)] for name, targets in aliases))

