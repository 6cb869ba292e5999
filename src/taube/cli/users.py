"""``taube user``: the users, mailboxes that receive mail and log in (RFC 5321 2.3.11 mailboxes)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import Failure, config_option, list_directory, name_command


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


# The password is read only once the directory is open: a configuration that cannot be used is
# reported before anyone is asked to type a password.
name_command(user, "add", argument="address",
             help="Add a user; the password is read from standard input.",
             change=lambda directory, address: directory.add_user(address, read_password()),
             done="user {} added")
name_command(user, "passwd", argument="address",
             help="Set a user's password, read from standard input.",
             change=lambda directory, address: directory.set_password(address, read_password()),
             done="password of {} changed")
name_command(user, "del", argument="address", help="Remove a user (the Maildir stays on disk).",
             change=lambda directory, address: directory.del_user(address),
             done="user {} removed")


@user.command("list")
@click.argument("domain", required=False)
@config_option
def user_list(domain: str | None, config: Path | None) -> None:
    """List users, all or those of DOMAIN."""
    list_directory(config, ["user"], lambda directory, _: ([u] for u in directory.list_users(domain)))
