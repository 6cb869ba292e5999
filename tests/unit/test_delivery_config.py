"""The delivery settings and the routing decision (transport table, relayhost, MX)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from taube.config import ConfigError, Settings, load_settings, parse_next_hop, split_nameserver
from taube.delivery.runner import Route, Router


def settings(text: str) -> Settings:
    return Settings.model_validate(tomllib.loads(text))


@pytest.mark.parametrize(("hop", "expected"), [
    ("127.0.0.1:2626", ("127.0.0.1", 2626, False)),
    ("[mail.example.org]", ("mail.example.org", 25, False)),
    ("[mail.example.org]:587", ("mail.example.org", 587, False)),
    ("example.org", ("example.org", 25, True)),
    ("Example.ORG:2525", ("example.org", 2525, True)),
    ("[::1]:2525", ("::1", 2525, False)),
    ("192.0.2.1", ("192.0.2.1", 25, False)),
])
def test_parse_next_hop(hop, expected):
    assert parse_next_hop(hop) == expected


@pytest.mark.parametrize("hop", ["", "host:0", "host:99999", "a b", "[unclosed:25"])
def test_bad_next_hop_is_refused(hop):
    with pytest.raises(ValidationError):
        settings(f'[delivery]\nrelayhost = "{hop}"\n')


@pytest.mark.parametrize(("entry", "expected"), [
    ("127.0.0.1:5353", ("127.0.0.1", 5353)),
    ("192.0.2.53", ("192.0.2.53", 53)),
    ("::1", ("::1", 53)),
    ("[::1]:5353", ("::1", 5353)),
])
def test_nameserver_entries(entry, expected):
    assert split_nameserver(entry) == expected
    assert settings(f'[dns]\nnameservers = ["{entry}"]\n').dns.nameservers == [entry]


@pytest.mark.parametrize("entry", ["ns.example.org", "127.0.0.1:0", "1.2.3.4:70000", ""])
def test_bad_nameserver_is_refused(entry):
    with pytest.raises(ValidationError):
        settings(f'[dns]\nnameservers = ["{entry}"]\n')


def test_defaults_follow_postfix():
    s = Settings()
    assert s.queue.lifetime == 5 * 86400
    assert s.queue.backoff == [300, 600, 1200, 2400, 3600]
    assert s.queue.delay_warning == 4 * 3600
    assert s.delivery.relayhost is None and s.delivery.transport == {}
    assert s.delivery.tls == "may" and s.delivery.tls_verify is False
    assert s.dns.nameservers == []
    assert s.smtp.etrn == "trusted"


def test_backoff_and_delay_warning_accept_durations():
    s = settings('[queue]\nbackoff = ["1m", 120, "1h"]\ndelay_warning = 0\n')
    assert s.queue.backoff == [60, 120, 3600]
    assert s.queue.delay_warning == 0
    with pytest.raises(ValidationError):
        settings("[queue]\nbackoff = []\n")


def test_relayhost_auth_needs_both_keys_and_a_relayhost():
    with pytest.raises(ValidationError):
        settings('[delivery]\nrelayhost = "[smtp.example.net]:587"\nrelayhost_user = "me"\n')
    with pytest.raises(ValidationError):
        settings('[delivery]\nrelayhost_user = "me"\nrelayhost_password_file = "pw"\n')


def test_routes():
    router = Router(settings(
        '[delivery]\nport = 2525\n[delivery.transport]\n"b.test" = "127.0.0.1:2626"\n'
        '".sub.test" = "[relay.sub.test]"\n"Upper.Test" = "mx.upper.test"\n'))
    assert router.route("b.test") == Route(key="[127.0.0.1]:2626", host="127.0.0.1", port=2626,
                                           mx=False, tls="may")
    assert router.route("B.Test.").host == "127.0.0.1"
    assert router.route("x.b.test").mx is True  # exact entries do not cover subdomains
    assert router.route("deep.x.sub.test").host == "relay.sub.test"
    assert router.route("sub.test").key == "sub.test"  # ".sub.test" is for subdomains only
    assert router.route("upper.test") == Route(key="mx.upper.test:2525", host="mx.upper.test",
                                               port=2525, mx=True, tls="may")
    assert router.route("elsewhere.test") == Route(key="elsewhere.test", host="elsewhere.test",
                                                   port=2525, mx=True, tls="may")


def test_relayhost_takes_what_the_transport_table_does_not(tmp_path: Path):
    (tmp_path / "pw").write_text("s3cret\n")
    config = tmp_path / "taube.toml"
    config.write_text(
        '[delivery]\nrelayhost = "[smtp.example.net]:587"\nrelayhost_user = "me@example.net"\n'
        'relayhost_password_file = "pw"\nrelayhost_tls = "encrypt"\n'
        '[delivery.transport]\n"b.test" = "127.0.0.1:2626"\n')
    router = Router(load_settings(config))
    route = router.route("example.com")
    assert (route.host, route.port, route.mx, route.tls) == ("smtp.example.net", 587, False, "encrypt")
    assert route.auth == ("me@example.net", "s3cret")
    assert router.route("b.test").auth is None


def test_unreadable_relayhost_password_is_a_config_error(tmp_path: Path):
    config = tmp_path / "taube.toml"
    config.write_text('[delivery]\nrelayhost = "[smtp.example.net]:587"\nrelayhost_user = "me"\n'
                      'relayhost_password_file = "missing"\n')
    with pytest.raises(ConfigError, match="relayhost_password_file"):
        Router(load_settings(config))


def test_readable_password_file_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    password = tmp_path / "pw"
    password.write_text("s3cret\n")
    config = tmp_path / "taube.toml"
    config.write_text('[delivery]\nrelayhost = "[smtp.example.net]:587"\nrelayhost_user = "me"\n'
                      'relayhost_password_file = "pw"\n')
    password.chmod(0o644)
    with caplog.at_level("WARNING", logger="taube.delivery"):
        Router(load_settings(config))
    assert "chmod 600" in caplog.text and "s3cret" not in caplog.text
    caplog.clear()
    password.chmod(0o600)
    with caplog.at_level("WARNING", logger="taube.delivery"):
        Router(load_settings(config))
    assert caplog.text == ""
