"""TLS for the listeners: server contexts (TLS 1.2 at least, the stdlib's secure defaults) and a
self-signed certificate for the host name when none is configured, so that STARTTLS works out
of the box (RFC 3207; RFC 8314 for implicit TLS).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..store import durable

__all__ = ["TLSProvider", "ensure_self_signed", "server_context"]

log = logging.getLogger("taube.tls")
SELF_SIGNED_DAYS = 825  # the longest validity clients still accept for a leaf certificate


def ensure_self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    """``directory/selfsigned.{crt,key}`` for ``hostname``, made on first use (key mode 0600)."""
    cert_path, key_path = directory / "selfsigned.crt", directory / "selfsigned.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt_names: list[x509.GeneralName] = [x509.DNSName(hostname)]
    try:
        alt_names.append(x509.IPAddress(ipaddress.ip_address(hostname)))
    except ValueError:
        pass
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    # Each file whole or not at all (tmp, fsync, rename); the key first and never readable by
    # others, the certificate last: both exist only once both are complete.
    durable.replace_file(key_path, key_bytes, mode=0o600)
    durable.replace_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    log.info("generated a self-signed certificate for %s in %s", hostname, cert_path)
    return cert_path, key_path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context: TLS 1.2 minimum, no compression, no renegotiation (stdlib defaults)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    return ctx


class TLSProvider:
    """The current server context; :meth:`reload` re-reads the certificate (SIGHUP)."""

    def __init__(self, cert: Path | None, key: Path | None, data_dir: Path, hostname: str) -> None:
        self._configured = (cert, key) if cert and key else None
        self._data_dir = data_dir
        self._hostname = hostname
        self.context = self._build()

    def _paths(self) -> tuple[Path, Path]:
        if self._configured is not None:
            return self._configured
        return ensure_self_signed(self._data_dir / "tls", self._hostname)

    def _build(self) -> ssl.SSLContext:
        return server_context(*self._paths())

    def reload(self) -> None:
        """Load the certificate again; keep the old context if the new files are broken."""
        try:
            self.context = self._build()
        except (OSError, ssl.SSLError) as e:
            log.error("TLS reload failed, keeping the running certificate: %s", e)
