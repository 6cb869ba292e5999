"""taube's DKIM signatures checked by three independent verifiers, each fetching the public key
from a real DNS server on loopback (tests/dnsserver.py):

* dkimpy (the library that signed, but through its verifier and a real DNS look-up);
* Perl's Mail::DKIM (Debian's libmail-dkim-perl), given the server through
  ``Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(nameservers => ..., port => ...))``. Its
  version in Debian 12 (1.20230212) has no Ed25519: it reports such a signature as "invalid
  (unsupported algorithm ed25519-sha256)", which is why RFC 8463 suggests signing with RSA too;
* OpenDKIM's ``opendkim-testmsg`` (Debian's opendkim-tools), which verifies what it reads on
  standard input. It asks the C library's resolver, which knows only /etc/resolv.conf and port
  53 and cannot be given a key file: so it runs in a mount namespace of its own (``unshare
  --mount``) where a bind mount puts a resolv.conf naming a DNS server of this test on
  ``127.53.x.y:53`` over /etc/resolv.conf. Without root or unshare those cases are skipped.

The Makefile's test target installs both Debian packages when they are missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dkim
import dns.resolver
import pytest

from taube.signing.dkim import Signer
from taube.signing.keys import KeyInfo, KeyStore
from tests.dnsserver import DNSServer
from tests.unit.test_dkim_sign import dkimpy_verifies

TIMEOUT = 60  # seconds for one verifier run (the DNS answers come from this machine)
OPENDKIM = shutil.which("opendkim-testmsg") or "/usr/sbin/opendkim-testmsg"

MAIL_DKIM = r"""
use strict; use warnings;
use Mail::DKIM::Verifier; use Mail::DKIM::DNS; use Net::DNS::Resolver;
my ($host, $port) = @ARGV;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(nameservers => [$host], port => $port,
    recurse => 0, udp_timeout => 10, tcp_timeout => 10, retry => 1));
binmode STDIN; local $/; my $message = <STDIN>;
my $dkim = Mail::DKIM::Verifier->new();
$dkim->PRINT($message); $dkim->CLOSE;
print "result ", $dkim->result, "\n";
printf "signature %s %s %s\n", $_->selector, $_->algorithm, $_->result_detail for $dkim->signatures;
"""

BODY = "Hello Bob,\r\n\r\nthe  report is attached.\t\r\n\r\n-- \r\nAlice\r\n"
HEADERS = ("From: Alice <alice@{domain}>", "To: Bob <bob@example.net>", "Subject: the report",
           "Date: Mon, 13 Nov 2023 22:13:20 +0000", "Message-ID: <report-1@{domain}>",
           "MIME-Version: 1.0", "Content-Type: text/plain; charset=us-ascii")


def message(domain: str) -> bytes:
    return ("".join(h.format(domain=domain) + "\r\n" for h in HEADERS) + "\r\n" + BODY).encode()


def publish(server: DNSServer, info: KeyInfo) -> None:
    server.add(info.record_name, "TXT", " ".join(f'"{s}"' for s in info.txt_strings()))


@dataclass(frozen=True)
class Keys:
    store: KeyStore
    signer: Signer


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    store = KeyStore(tmp_path_factory.mktemp("dkim"))
    store.generate("rsa.example", "r2048")
    store.generate("ed.example", "e1", kind="ed25519")
    store.generate("dual.example", "r", kind="rsa")
    store.generate("dual.example", "e", kind="ed25519")
    store.generate("big.example", "r4096", bits=4096)  # a record of several strings, over TCP
    return Keys(store, Signer(store))


def serve(server: DNSServer, store: KeyStore) -> DNSServer:
    for info in store.list():
        publish(server, info)
    return server


@pytest.fixture(scope="module")
def dns_server(keys: Keys) -> Iterator[DNSServer]:
    with DNSServer() as server:
        yield serve(server, keys.store)


def signed(keys: Keys, domain: str) -> bytes:
    data = message(domain)
    result = keys.signer.sign_bytes(data, sender=f"alice@{domain}")
    assert result.errors == () and result.signatures
    return result.header + data


# -- the verifiers -----------------------------------------------------------------------------


def dkimpy_results(data: bytes, server: DNSServer) -> list[bool]:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server.host]
    resolver.port = server.port
    resolver.lifetime = 10

    def txt(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode(), "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(answer[0].strings)

    count = sum(1 for n, _ in dkim.DKIM(data).headers if n.lower() == b"dkim-signature")
    return [dkimpy_verifies(data, idx, txt) for idx in range(count)]


def mail_dkim(data: bytes, server: DNSServer) -> tuple[str, dict[str, str]]:
    """Mail::DKIM's overall result and ``{selector: "algorithm result detail"}``."""
    if subprocess.run(["perl", "-MMail::DKIM::Verifier", "-e1"], capture_output=True).returncode:
        pytest.skip("Perl's Mail::DKIM is not installed (make test installs libmail-dkim-perl)")
    done = subprocess.run(["perl", "-e", MAIL_DKIM, server.host, str(server.port)], input=data,
                          capture_output=True, timeout=TIMEOUT, check=True)
    result, per_signature = "", {}
    for line in done.stdout.decode().splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "result":
            result = rest
        elif kind == "signature":
            selector, _, detail = rest.partition(" ")
            per_signature[selector] = detail
    return result, per_signature


# -- dkimpy and Mail::DKIM ---------------------------------------------------------------------


@pytest.mark.parametrize("domain", ["rsa.example", "ed.example", "big.example"])
def test_dkimpy_verifies(keys: Keys, dns_server: DNSServer, domain: str) -> None:
    assert dkimpy_results(signed(keys, domain), dns_server) == [True]


def test_dkimpy_verifies_both_signatures_of_a_dual_signed_message(keys: Keys, dns_server: DNSServer) -> None:
    assert dkimpy_results(signed(keys, "dual.example"), dns_server) == [True, True]


@pytest.mark.parametrize(("domain", "selector"), [("rsa.example", "r2048"), ("big.example", "r4096")])
def test_mail_dkim_verifies_rsa(keys: Keys, dns_server: DNSServer, domain: str, selector: str) -> None:
    assert mail_dkim(signed(keys, domain), dns_server) == ("pass", {selector: "rsa-sha256 pass"})


def test_mail_dkim_passes_a_dual_signed_message_on_its_rsa_signature(keys: Keys, dns_server: DNSServer) -> None:
    result, per_signature = mail_dkim(signed(keys, "dual.example"), dns_server)
    assert result == "pass"
    assert per_signature["r"] == "rsa-sha256 pass"
    # This Mail::DKIM predates Ed25519 (added upstream in 2024); a newer one says "pass".
    assert per_signature["e"] in ("ed25519-sha256 invalid (unsupported algorithm ed25519-sha256)",
                                  "ed25519-sha256 pass")


def tamper_body(data: bytes) -> bytes:
    return data.replace(b"the  report is attached.", b"the report is NOT attached.")


def add_from(data: bytes) -> bytes:
    """A second From: above the signed one, where a reader may see it. A verifier takes the
    bottom-most instance for each name in h=, so only oversigning (From listed once more than
    present) makes this break the signature (RFC 6376 sections 5.4.2, 8.15)."""
    return data.replace(b"\r\nFrom: Alice", b"\r\nFrom: Mallory <mallory@elsewhere.example>\r\nFrom: Alice", 1)


def reformat(data: bytes) -> bytes:
    """What relays may do under relaxed/relaxed: whitespace, folding, field name case."""
    return (data.replace(b"Subject: the report", b"SUBJECT:\r\n   the   report ")
                .replace(b"-- \r\nAlice", b"--   \t\r\nAlice   ") + b"\r\n\r\n")


@pytest.mark.parametrize(("change", "passes"), [(tamper_body, False), (add_from, False), (reformat, True)])
def test_dkimpy_and_mail_dkim_on_changed_messages(keys: Keys, dns_server: DNSServer, change, passes: bool) -> None:
    data = change(signed(keys, "rsa.example"))
    assert dkimpy_results(data, dns_server) == [passes]
    result, per_signature = mail_dkim(data, dns_server)
    assert result == ("pass" if passes else "fail")
    assert per_signature["r2048"].startswith("rsa-sha256 " + ("pass" if passes else "fail"))


def test_without_oversigning_mail_dkim_would_pass_an_added_from(keys: Keys, dns_server: DNSServer) -> None:
    """The control for ``add_from``: signed with From listed only once, the forged message
    still verifies with Mail::DKIM (dkimpy's verifier adds an extra From of its own)."""
    info = keys.store.get("rsa.example", "r2048")
    data = message("rsa.example")
    header = dkim.sign(data, b"r2048", b"rsa.example", info.path.read_bytes(),
                       canonicalize=(b"relaxed", b"relaxed"), include_headers=[b"from", b"to", b"subject"])
    assert mail_dkim(header + data, dns_server)[0] == "pass"
    assert mail_dkim(add_from(header + data), dns_server)[0] == "pass"


def test_dkimpy_on_changed_ed25519_messages(keys: Keys, dns_server: DNSServer) -> None:
    data = signed(keys, "ed.example")
    assert dkimpy_results(tamper_body(data), dns_server) == [False]
    assert dkimpy_results(add_from(data), dns_server) == [False]
    assert dkimpy_results(reformat(data), dns_server) == [True]


# -- OpenDKIM ----------------------------------------------------------------------------------


def _namespace_usable() -> str | None:
    """Why opendkim-testmsg cannot be pointed at a test DNS server here, or None."""
    if not os.path.exists(OPENDKIM):
        return "opendkim-testmsg is not installed (make test installs opendkim-tools)"
    if os.geteuid() != 0:
        return "binding port 53 and a private /etc/resolv.conf need root"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is missing"
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, timeout=TIMEOUT)
    if probe.returncode:
        return f"unshare --mount is not permitted: {probe.stderr.decode().strip()}"
    return None


@pytest.fixture(scope="module")
def port53_server(keys: Keys) -> Iterator[DNSServer]:
    """The records again, on port 53 of a loopback address of this process's own."""
    reason = _namespace_usable()
    if reason:
        pytest.skip(reason)
    pid = os.getpid()
    for attempt in range(8):
        host = f"127.53.{(pid >> 8) & 255}.{(pid + attempt) % 250 + 2}"
        server = DNSServer(host=host, port=53)
        try:
            server.start()
        except OSError:
            continue
        try:
            yield serve(server, keys.store)
        finally:
            server.stop()
        return
    pytest.skip("no loopback address with port 53 free")


def opendkim(data: bytes, server: DNSServer, tmp_path: Path) -> tuple[int, str]:
    """``opendkim-testmsg``'s exit status and complaint (0 and "" when a signature verifies)."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {server.host}\noptions timeout:5 attempts:2\n")
    # The bind mount exists only in the new mount namespace (unshare makes it private).
    script = 'mount --bind "$1" /etc/resolv.conf && exec "$2"'
    done = subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh", str(resolv), OPENDKIM],
                          input=data, capture_output=True, timeout=TIMEOUT)
    return done.returncode, done.stderr.decode().strip()


@pytest.mark.parametrize("domain", ["rsa.example", "ed.example", "big.example", "dual.example"])
def test_opendkim_verifies(keys: Keys, port53_server: DNSServer, tmp_path: Path, domain: str) -> None:
    assert opendkim(signed(keys, domain), port53_server, tmp_path) == (0, "")
    assert (f"{keys.store.list(domain)[0].selector}._domainkey.{domain}", "TXT") in port53_server.queries


@pytest.mark.parametrize("domain", ["rsa.example", "ed.example"])
@pytest.mark.parametrize(("change", "passes"), [(tamper_body, False), (add_from, False), (reformat, True)])
def test_opendkim_on_changed_messages(keys: Keys, port53_server: DNSServer, tmp_path: Path,
                                      domain: str, change, passes: bool) -> None:
    status, complaint = opendkim(change(signed(keys, domain)), port53_server, tmp_path)
    if passes:
        assert (status, complaint) == (0, "")
    elif change is add_from:  # OpenDKIM refuses two From: fields outright (RFC 5322 3.6)
        assert status != 0 and "Syntax error" in complaint
    else:
        assert status != 0 and "Bad signature" in complaint


def test_opendkim_says_so_when_there_is_no_signature(port53_server: DNSServer, tmp_path: Path) -> None:
    """(So that a pass above is a verified signature, not the absence of one.)"""
    status, complaint = opendkim(message("rsa.example"), port53_server, tmp_path)
    assert status != 0 and "No signature" in complaint
