"""``taube user``: the users, mailboxes that receive mail and log in (RFC 5321 2.3.11 mailboxes)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..config import load_settings
from .common import Failure, config_option, edit, open_directory, print_rows


@click.group()
def user() -> None:
    """Users: mailboxes that can receive mail and log in."""


def read_password() -> str:
    """The new password: prompted twice without echo on a terminal, else the first line of
    standard input (its line end removed, everything else kept)."""
    if sys.stdin.isatty():
        password: str = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        raise Failure("empty password (give it on standard input, one line)")
    return password


@user.command("add")
@click.argument("address")
@config_option
def user_add(address: str, config: Path | None) -> None:
    """Add a user; the password is read from standard input."""
    edit(config, lambda directory: directory.add_user(address, read_password()),
         f"user {address.lower()} added")


@user.command("del")
@click.argument("address")
@config_option
def user_del(address: str, config: Path | None) -> None:
    """Remove a user (the Maildir stays on disk)."""
    edit(config, lambda directory: directory.del_user(address), f"user {address.lower()} removed")


@user.command("list")
@click.argument("domain", required=False)
@config_option
def user_list(domain: str | None, config: Path | None) -> None:
    """List users, all or those of DOMAIN."""
    with open_directory(load_settings(config)) as directory:
        users = directory.list_users(domain)
    print_rows(["user"], ([u] for u in users))


@user.command("passwd")
@click.argument("address")
@config_option
def user_passwd(address: str, config: Path | None) -> None:
    """Set a user's password, read from standard input."""
    edit(config, lambda directory: directory.set_password(address, read_password()),
         f"password of {address.lower()} changed")
