"""``taube domain``: local domains added beyond those of the configuration file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .common import config_option, list_directory, name_command

if TYPE_CHECKING:
    from ..config import Settings
    from ..directory.sqlite import SQLiteDirectory


@click.group()
def domain() -> None:
    """Local domains beyond those of the configuration file."""


name_command(domain, "add", argument="name", help="Add a local domain.",
             change=lambda directory, name: directory.add_domain(name),
             done="domain {} added")
name_command(domain, "del", argument="name",
             help="Remove a local domain that has no users or aliases left.",
             change=lambda directory, name: directory.del_domain(name),
             done="domain {} removed")


def _domain_rows(directory: SQLiteDirectory, settings: Settings) -> Iterator[list[str]]:
    configured = set(settings.domains)
    for d in directory.list_domains():
        yield [d, "configuration" if d in configured else "database"]


@domain.command("list")
@config_option
def domain_list(config: Path | None) -> None:
    """List the local domains and where each is defined."""
    list_directory(config, ["domain", "defined in"], _domain_rows)
