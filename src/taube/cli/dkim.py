"""``taube dkim``: the DKIM keys that sign outgoing mail (RFC 6376, RFC 8463).

Keys live under ``<data_dir>/dkim/<domain>/<selector>.pem`` (directories 0700, files 0600).
``keygen`` and ``list`` print the TXT record to publish, as one zone-file line; no command ever
prints a private key.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..config import load_settings
from ..signing.keys import DEFAULT_RSA_BITS, MAX_PEM_SIZE, DKIMKeyError, KeyStore
from .common import Failure, config_option, print_rows

__all__ = ["dkim"]


def _store(config: Path | None) -> KeyStore:
    return KeyStore(load_settings(config).data_dir)


@click.group()
def dkim() -> None:
    """DKIM signing keys: create, import, list, delete."""


def _selector(command):  # type: ignore[no-untyped-def]
    return click.option("--selector", "-s", required=True, metavar="SEL",
                        help="The selector: the key's record is SEL._domainkey.DOMAIN.")(command)


@dkim.command()
@click.argument("domain")
@_selector
@click.option("--type", "kind", type=click.Choice(["rsa", "ed25519"]), default="rsa",
              show_default=True, help="Key type (ed25519-sha256 is RFC 8463).")
@click.option("--bits", type=int, default=DEFAULT_RSA_BITS, show_default=True,
              help="RSA key size, 1024 to 4096.")
@config_option
def keygen(domain: str, selector: str, kind: str, bits: int, config: Path | None) -> None:
    """Create a key for DOMAIN and print the TXT record to publish."""
    try:
        info = _store(config).generate(domain, selector, kind=kind, bits=bits)
    except DKIMKeyError as e:
        raise Failure(str(e)) from None
    click.echo(info.record())


@dkim.command(name="import")
@click.argument("domain")
@_selector
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@config_option
def import_key(domain: str, selector: str, file: Path, config: Path | None) -> None:
    """Import an existing private key (PEM: RSA or Ed25519) for DOMAIN; print its record."""
    try:
        with file.open("rb") as f:
            pem = f.read(MAX_PEM_SIZE + 1)
    except OSError as e:
        raise Failure(f"cannot read {file}: {e.strerror}") from None
    try:
        info = _store(config).import_pem(domain, selector, pem)
    except DKIMKeyError as e:
        raise Failure(str(e)) from None
    click.echo(info.record())


@dkim.command(name="list")
@click.argument("domain", required=False)
@config_option
def list_keys(domain: str | None, config: Path | None) -> None:
    """The keys (of DOMAIN, or all): domain, selector, type and the record to publish."""
    try:
        keys = _store(config).list(domain)
    except DKIMKeyError as e:
        raise Failure(str(e)) from None
    print_rows(("domain", "selector", "type", "record"),
               ((k.domain, k.selector, k.type, k.record())
                for k in keys))


@dkim.command()
@click.argument("domain")
@_selector
@config_option
def delete(domain: str, selector: str, config: Path | None) -> None:
    """Remove a key: mail for DOMAIN is no longer signed with it (unpublish the record after
    mail signed with it had time to arrive)."""
    try:
        info = _store(config).delete(domain, selector)
    except DKIMKeyError as e:
        raise Failure(str(e)) from None
    click.echo(f"deleted {info.selector}._domainkey.{info.domain}")
