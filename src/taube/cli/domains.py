"""``taube domain``: local domains added beyond those of the configuration file."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import load_settings
from .common import config_option, edit, open_directory, print_rows


@click.group()
def domain() -> None:
    """Local domains beyond those of the configuration file."""


@domain.command("add")
@click.argument("name")
@config_option
def domain_add(name: str, config: Path | None) -> None:
    """Add a local domain."""
    edit(config, lambda directory: directory.add_domain(name), f"domain {name.lower()} added")


@domain.command("del")
@click.argument("name")
@config_option
def domain_del(name: str, config: Path | None) -> None:
    """Remove a local domain that has no users or aliases left."""
    edit(config, lambda directory: directory.del_domain(name), f"domain {name.lower()} removed")


@domain.command("list")
@config_option
def domain_list(config: Path | None) -> None:
    """List the local domains and where each is defined."""
    settings = load_settings(config)
    with open_directory(settings) as directory:
        domains = directory.list_domains()
    configured = set(settings.domains)
    print_rows(["domain", "defined in"],
               ([d, "configuration" if d in configured else "database"] for d in domains))
