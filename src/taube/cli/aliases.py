"""``taube alias``: addresses that forward to others, local or remote; ``@domain`` catches all."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import load_settings
from .common import config_option, edit, open_directory, print_rows


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


@alias.command("del")
@click.argument("name", metavar="ALIAS")
@config_option
def alias_del(name: str, config: Path | None) -> None:
    """Remove an alias."""
    edit(config, lambda directory: directory.del_alias(name), f"alias {name.lower()} removed")


@alias.command("list")
@config_option
def alias_list(config: Path | None) -> None:
    """List the aliases and their targets."""
    with open_directory(load_settings(config)) as directory:
        aliases = directory.list_aliases()
    print_rows(["alias", "targets"], ([name, ",".join(targets)] for name, targets in aliases))
