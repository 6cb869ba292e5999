"""The DKIM signer (taube.signing.dkim): which key signs, what is signed, and that dkimpy's
verifier accepts the signatures (tests/unit/test_dkim_verifiers.py checks them with Mail::DKIM
and OpenDKIM too)."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dkim
import dkim.util
import pytest

from taube.signing import keys as keys_module
from taube.signing.dkim import CHUNK, KEYS_RECHECK, MAX_FROM, Signer, SigningResult
from taube.signing.keys import KeyStore

NOW = 1_700_000_000  # t= comes from the injected clock


def message(*headers: str, body: str = "Hello,\r\n\r\nthe body.\r\n") -> bytes:
    return ("".join(h + "\r\n" for h in headers) + "\r\n" + body).encode()


STANDARD = ("From: Alice <alice@example.org>", "To: bob@example.net", "Subject: greetings",
            "Date: Mon, 13 Nov 2023 22:13:20 +0000", "Message-ID: <1@example.org>")


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path)


@pytest.fixture
def signer(store: KeyStore) -> Signer:
    return Signer(store, clock=lambda: NOW)


def dns_of(store: KeyStore) -> Callable[..., bytes | None]:
    """A dkimpy ``dnsfunc`` answering with the store's records as published."""
    records = {info.record_name.encode(): "".join(info.txt_strings()).encode() for info in store.list()}

    def txt(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name)

    return txt


def verify_each(signed: bytes, store: KeyStore) -> list[bool]:
    """dkimpy's verdict on each DKIM-Signature of ``signed``, top to bottom."""
    count = sum(1 for name, _ in dkim.DKIM(signed).headers if name.lower() == b"dkim-signature")
    return [dkimpy_verifies(signed, i, dns_of(store)) for i in range(count)]


def dkimpy_verifies(signed: bytes, idx: int, dnsfunc: Callable[..., bytes | None]) -> bool:
    """dkimpy's verdict on signature ``idx``: it raises for some failures (a body hash mismatch)
    and returns False for others."""
    try:
        return bool(dkim.DKIM(signed).verify(idx=idx, dnsfunc=dnsfunc))
    except dkim.DKIMException:
        return False


def tags(signature: bytes) -> dict[bytes, bytes]:
    value = signature.split(b":", 1)[1]
    return {k: v for k, v in dkim.util.parse_tag_value(value).items()}


def h_list(signature: bytes) -> list[bytes]:
    return [x.strip() for x in tags(signature)[b"h"].split(b":")]


def sign(signer: Signer, data: bytes, sender: str = "alice@example.org") -> SigningResult:
    result = signer.sign_bytes(data, sender=sender)
    assert result.errors == ()
    return result


# -- which key ---------------------------------------------------------------------------------


def test_the_from_domain_signs(store: KeyStore, signer: Signer) -> None:
    store.generate("example.org", "s1", bits=1024)
    store.generate("other.example", "s1", bits=1024)
    data = message(*STANDARD)
    result = sign(signer, data, sender="someone@other.example")
    assert result.domain == "example.org"
    assert [(s.domain, s.selector, s.algorithm) for s in result.signatures] == [("example.org", "s1", "rsa-sha256")]
    assert result.header.startswith(b"DKIM-Signature: ") and result.header.endswith(b"\r\n")
    assert verify_each(result.header + data, store) == [True]


def test_the_envelope_senders_domain_signs_when_from_is_none_of_ours(store: KeyStore, signer: Signer) -> None:
    store.generate("example.org", "s1", kind="ed25519")
    data = message("From: list@lists.elsewhere.example", "To: bob@example.net", "Subject: x")
    result = sign(signer, data, sender="bounces@example.org")
    assert result.domain == "example.org"
    assert verify_each(result.header + data, store) == [True]


def test_nothing_is_signed_without_a_key(store: KeyStore, signer: Signer) -> None:
    store.generate("example.org", "s1", kind="ed25519")
    data = message("From: a@elsewhere.example", "Subject: x", body="body\r\n" * 1000)
    stream = io.BytesIO(data)
    assert signer.sign(stream, sender="b@elsewhere.example") == SigningResult()
    assert stream.tell() == data.index(b"\r\n\r\n") + 4  # the body was not even read
    assert signer.sign_bytes(data, sender="") == SigningResult()  # the null sender has no domain


def test_a_display_name_that_looks_like_our_address_does_not_choose_the_key(store: KeyStore,
                                                                            signer: Signer) -> None:
    store.generate("example.org", "s1", kind="ed25519")
    data = message('From: "ceo@example.org" <mallory@elsewhere.example>', "Subject: x")
    assert signer.sign_bytes(data, sender="mallory@elsewhere.example").signatures == ()


def test_the_first_from_address_we_hold_a_key_for(store: KeyStore, signer: Signer) -> None:
    store.generate("example.org", "s1", kind="ed25519")
    data = message("From: a@elsewhere.example, Bea <bea@Example.ORG>", "Sender: a@elsewhere.example")
    assert sign(signer, data, sender="").domain == "example.org"


def test_an_international_from_domain_signs_with_its_a_label_key(store: KeyStore, signer: Signer) -> None:
    store.generate("bücher.example", "s1", kind="ed25519")
    data = message("From: Käthe <kaethe@bücher.example>", "Subject: x")
    result = sign(signer, data, sender="")
    assert result.domain == "xn--bcher-kva.example"
    assert tags(result.header)[b"d"] == b"xn--bcher-kva.example"
    assert verify_each(result.header + data, store) == [True]


def test_every_selector_of_the_domain_signs(store: KeyStore, signer: Signer) -> None:
    """RFC 8463 section 1: RSA and Ed25519 side by side."""
    store.generate("example.org", "rsa", bits=1024)
    store.generate("example.org", "ed", kind="ed25519")
    data = message(*STANDARD)
    result = sign(signer, data)
    assert [(s.selector, s.algorithm) for s in result.signatures] == [("ed", "ed25519-sha256"), ("rsa", "rsa-sha256")]
    assert result.header == b"".join(s.header for s in result.signatures)
    assert verify_each(result.header + data, store) == [True, True]


# -- what is signed ----------------------------------------------------------------------------


def test_signature_tags(store: KeyStore, signer: Signer) -> None:
    store.generate("example.org", "s1", kind="ed25519")
    result = sign(signer, message(*STANDARD))
    found = tags(result.header)
    assert found[b"v"] == b"1"
    assert found[b"a"] == b"ed25519-sha256"
    assert found[b"c"] == b"relaxed/relaxed"
    assert (found[b"d"], found[b"s"], found[b"t"]) == (b"example.org", b"s1", str(NOW).encode())
    assert b"l" not in found  # the whole body is signed: nothing can be appended


def test_recommended_fields_are_signed_and_from_once_more_than_present(store: KeyStore, signer: Signer) -> None:
    store.generate("example.org", "s1", kind="ed25519")
    data = message("Received: from x by y", "Return-Path: <alice@example.org>", *STANDARD,
                   "Cc: c1@example.net", "X-Mailer: something", "CC: c2@example.net", "MIME-Version: 1.0",
                   "Content-Type: text/plain", "List-Id: <l.example.org>", "Bcc: hidden@example.net")
    result = sign(signer, data)
    assert h_list(result.header) == [b"from", b"to", b"subject", b"date", b"message-id", b"cc", b"cc",
                                     b"mime-version", b"content-type", b"list-id", b"from"]
    assert verify_each(result.header + data, store) == [True]


def test_a_message_without_from_signs_a_null_from(store: KeyStore, signer: Signer) -> None:
    store.generate("example.org", "s1", kind="ed25519")
    data = message("Subject: x")
    result = sign(signer, data)
    assert h_list(result.header) == [b"subject", b"from"]
    assert verify_each(result.header + data, store) == [True]
    assert verify_each(result.header + b"From: someone@example.org\r\n" + data, store) == [False]


@pytest.mark.parametrize("where", ["top", "bottom"])
def test_a_second_from_breaks_the_signature(store: KeyStore, signer: Signer, where: str) -> None:
    store.generate("example.org", "s1", bits=1024)
    data = message(*STANDARD)
    result = sign(signer, data)
    head, _, body = data.partition(b"\r\n\r\n")
    extra = b"From: Mallory <mallory@example.org>\r\n"
    forged = extra + head + b"\r\n\r\n" + body if where == "top" else head + b"\r\n" + extra + b"\r\n" + body
    assert verify_each(result.header + forged, store) == [False]


@pytest.mark.parametrize("change", [
    lambda m: m.replace(b"the body.", b"the b0dy."),
    lambda m: m.replace(b"the body.\r\n", b"the body.\r\nP.S. more\r\n"),
    lambda m: m.replace(b"Subject: greetings", b"Subject: greetings!"),
    lambda m: m.replace(b"To: bob@example.net", b"To: eve@example.net"),
])
def test_a_tampered_message_fails(store: KeyStore, signer: Signer, change: Callable[[bytes], bytes]) -> None:
    store.generate("example.org", "rsa", bits=1024)
    store.generate("example.org", "ed", kind="ed25519")
    data = message(*STANDARD)
    result = sign(signer, data)
    assert verify_each(result.header + change(data), store) == [False, False]


@pytest.mark.parametrize("change", [
    lambda m: m.replace(b"the body.", b"the   body.\t "),  # whitespace runs and trailing whitespace
    lambda m: m + b"\r\n\r\n\r\n",  # empty lines at the end
    lambda m: m.replace(b"Subject: greetings", b"SUBJECT:   greetings  "),  # field name case, spaces
    lambda m: m.replace(b"To: bob@example.net", b"To:\r\n\tbob@example.net"),  # refolded
    lambda m: b"Received: from relay by mx\r\nX-Spam: no\r\n" + m,  # fields added on the way
])
def test_relaxed_canonicalization_survives_what_relays_do(store: KeyStore, signer: Signer,
                                                          change: Callable[[bytes], bytes]) -> None:
    store.generate("example.org", "rsa", bits=1024)
    store.generate("example.org", "ed", kind="ed25519")
    data = message(*STANDARD)
    result = sign(signer, data)
    assert verify_each(result.header + change(data), store) == [True, True]


def test_a_header_only_message(store: KeyStore, signer: Signer) -> None:
    store.generate("example.org", "s1", kind="ed25519")
    data = b"From: alice@example.org\r\nSubject: nothing else\r\n"
    result = sign(signer, data)
    assert verify_each(result.header + data, store) == [True]


# -- big messages and bad input ----------------------------------------------------------------


class CountingReader(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.largest = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.largest = max(self.largest, len(chunk))
        return chunk


def test_a_big_body_is_read_in_bounded_chunks(store: KeyStore, signer: Signer) -> None:
    store.generate("example.org", "s1", kind="ed25519")
    line = "A line of a long message, with  two spaces and a tab\there.  \r\n"
    data = message(*STANDARD, body=line * (5 * CHUNK // len(line)))
    stream = CountingReader(data)
    result = signer.sign(stream, sender="alice@example.org")
    assert result.errors == ()
    assert 0 < stream.largest <= CHUNK
    assert verify_each(result.header + data, store) == [True]


def test_an_oversized_header_section_is_not_signed(store: KeyStore) -> None:
    store.generate("example.org", "s1", kind="ed25519")
    signer = Signer(store, max_header=1000)
    data = message(*STANDARD, *(f"X-Filler-{i}: {'x' * 60}" for i in range(20)))
    result = signer.sign_bytes(data, sender="alice@example.org")
    assert result.signatures == ()
    assert result.errors == ("header section larger than 1000 octets: not signed",)
    one_line = signer.sign_bytes(b"From: alice@example.org" + b"x" * 5000, sender="alice@example.org")
    assert one_line.errors == ("header section larger than 1000 octets: not signed",)


def test_a_malformed_header_section_gives_an_error_not_an_exception(store: KeyStore, signer: Signer) -> None:
    store.generate("example.org", "s1", kind="ed25519")
    result = signer.sign_bytes(message(*STANDARD, "this line is no header field"), sender="alice@example.org")
    assert result.signatures == ()
    assert len(result.errors) == 1 and result.errors[0].startswith("header section not signable")


def test_a_header_section_starting_with_a_continuation_line(store: KeyStore, signer: Signer) -> None:
    store.generate("example.org", "s1", kind="ed25519")
    result = signer.sign_bytes(b" folded\r\n" + message(*STANDARD), sender="alice@example.org")
    assert result.signatures == ()
    assert result.errors == ("header section not signable: it starts with a continuation line",)


def test_an_overlong_from_is_not_parsed(store: KeyStore, signer: Signer) -> None:
    store.generate("example.org", "s1", kind="ed25519")
    crowd = ", ".join(f"user{i}@elsewhere.example" for i in range(400))
    data = message(f"From: {crowd}, alice@example.org", "Subject: x")
    assert len(crowd) > MAX_FROM
    assert sign(signer, data, sender="").signatures == ()  # the From: is no candidate
    assert sign(signer, data, sender="alice@example.org").domain == "example.org"


def test_an_unreadable_key_directory_means_no_key(store: KeyStore, signer: Signer,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    store.generate("example.org", "s1", kind="ed25519")

    def denied(path: object) -> list[str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(keys_module.os, "listdir", denied)
    assert sign(signer, message(*STANDARD)).signatures == ()
    assert "Permission denied" in caplog.text


def test_an_unparsable_from_falls_back_to_the_envelope_sender(store: KeyStore, signer: Signer) -> None:
    store.generate("example.org", "s1", kind="ed25519")
    data = message("From: <<<@@@>>>", "Subject: x")
    result = sign(signer, data)
    assert result.domain == "example.org"


def test_a_broken_key_file_is_logged_and_the_others_still_sign(store: KeyStore, signer: Signer,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    good = store.generate("example.org", "good", kind="ed25519")
    (good.path.parent / "broken.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with caplog.at_level(logging.WARNING):
        result = sign(signer, message(*STANDARD))
    assert [s.selector for s in result.signatures] == ["good"]
    assert "broken.pem" in caplog.text


# -- keys cached, changes seen -----------------------------------------------------------------


def test_keys_are_read_once_and_again_after_a_change(store: KeyStore, signer: Signer,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store.generate("example.org", "s1", kind="ed25519")
    reads: list[str] = []
    real = store.keys_for

    def counting(domain: str) -> Any:
        reads.append(domain)
        return real(domain)

    monkeypatch.setattr(store, "keys_for", counting)
    data = message(*STANDARD)
    first = sign(signer, data)
    sign(signer, data)
    assert reads == ["example.org"]
    store.delete("example.org", "s1")
    assert signer.sign_bytes(data, sender="alice@example.org").signatures == ()
    store.generate("example.org", "s1", kind="ed25519")  # a new key under the same selector
    second = sign(signer, data)
    assert reads == ["example.org", "example.org"]
    assert verify_each(second.header + data, store) == [True]
    assert verify_each(first.header + data, store) == [False]  # the old key's signature


# -- who, and where it runs --------------------------------------------------------------------


def test_applies_to_authenticated_users_and_trusted_networks(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    now = [100.0]
    signer = Signer(store, trusted=lambda ip: ip.startswith("10."), monotonic=lambda: now[0])
    # No key at all: nothing applies, and the message is never read back for it.
    assert not signer.applies(client_ip="10.1.2.3", user="alice@example.org")
    store.generate("example.org", "s1", kind="ed25519")
    now[0] += KEYS_RECHECK
    assert signer.applies(client_ip="10.1.2.3", user=None)
    assert signer.applies(client_ip="192.0.2.1", user="alice@example.org")
    assert not signer.applies(client_ip="192.0.2.1", user=None)
    assert not Signer(store).applies(client_ip="127.0.0.1", user=None)


def test_sign_async_runs_in_the_executor(store: KeyStore) -> None:
    store.generate("example.org", "s1", kind="ed25519")
    threads: list[str] = []

    class Recording(ThreadPoolExecutor):
        def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
            def run() -> Any:
                threads.append(threading.current_thread().name)
                return fn(*args, **kwargs)
            return super().submit(run)

    with Recording(max_workers=1, thread_name_prefix="dkim-test") as pool:
        signer = Signer(store, clock=lambda: NOW, executor=pool)
        data = message(*STANDARD)
        result = asyncio.run(signer.sign_async(io.BytesIO(data), sender="alice@example.org"))
    assert threads and threads[0].startswith("dkim-test")
    assert verify_each(result.header + data, store) == [True]


def test_sign_async_with_the_modules_own_pool(store: KeyStore, signer: Signer) -> None:
    store.generate("example.org", "s1", kind="ed25519")
    data = message(*STANDARD)

    async def main() -> SigningResult:
        return await asyncio.wait_for(signer.sign_async(io.BytesIO(data), sender="alice@example.org"), 30)

    assert verify_each(asyncio.run(main()).header + data, store) == [True]


def test_has_keys_follows_the_key_directory_within_a_second(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    store = KeyStore(tmp_path)
    now = [100.0]
    signer = Signer(store, monotonic=lambda: now[0])
    stats: list[bool] = []  # the looks at dkim/ (a stat, a listing when it changed)
    look = signer._look_for_keys  # noqa: SLF001

    def counting() -> bool:
        stats.append(look())
        return stats[-1]

    monkeypatch.setattr(signer, "_look_for_keys", counting)
    assert not signer.has_keys()
    store.generate("example.org", "s1", kind="ed25519")
    assert not signer.has_keys() and len(stats) == 1  # the answer of a moment ago: no stat
    now[0] += KEYS_RECHECK
    assert signer.has_keys()
    store.delete("example.org", "s1")
    now[0] += KEYS_RECHECK
    assert not signer.has_keys()
    assert len(stats) == 3
