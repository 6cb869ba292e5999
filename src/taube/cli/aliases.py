"""``taube alias``: addresses that forward to others, local or remote; ``@domain`` catches all."""

from __future__ import annotations

from pathlib import Path

import click

from .common import config_option, edit, list_directory, name_command


@click.group()
def alias() -> None:
    """Aliases: addresses that forward to other addresses, local or remote."""


@alias.command("add")
@click.argument("name", metavar="ALIAS")
@click.argument("targets", metavar="TARGET[,TARGET...]", nargs=-1, required=True)
@config_option
def alias_add(name: str, targets: tuple[str, ...], config: Path | None) -> None:
    """Add ALIAS (local@domain, or @domain for a catch-all) forwarding to the TARGETs."""
    addresses = [t.strip() for arg in targets for t in arg.split(",") if t.strip()]
    edit(config, lambda directory: directory.add_alias(name, addresses), f"alias {name.lower()} added")


name_command(alias, "del", argument="name", metavar="ALIAS", help="Remove an alias.",
             change=lambda directory, name: directory.del_alias(name), done="alias {} removed")


@alias.command("list")
@config_option
def alias_list(config: Path | None) -> None:
    """List the aliases and their targets."""
    list_directory(config, ["alias", "targets"], lambda directory, _: (
        [name, ",".join(targets)] for name, targets in directory.list_aliases()))
