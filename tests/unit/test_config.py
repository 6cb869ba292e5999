"""Configuration: defaults, validation errors that name the key, paths relative to the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from taube.config import ConfigError, load_settings, parse_duration, parse_listen


def test_defaults_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TAUBE_CONFIG", raising=False)
    s = load_settings()
    assert s.data_dir == tmp_path / "var"
    assert s.smtp.listen == ["127.0.0.1:2525"]
    assert s.smtp.max_message_size == 26214400
    assert s.source is None


def test_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "etc" / "taube.toml"
    cfg.parent.mkdir()
    cfg.write_text('hostname = "Mail.Example.TEST."\ndata_dir = "../data"\ndomains = ["Example.Test"]\n'
                   '[smtp]\ntimeout_command = "2m"\n')
    monkeypatch.setenv("TAUBE_CONFIG", str(cfg))
    s = load_settings()
    assert s.hostname == "mail.example.test"
    assert s.data_dir == (tmp_path / "data").resolve()
    assert s.domains == ["example.test"]
    assert s.smtp.timeout_command == 120.0
    assert s.source == cfg.resolve()


@pytest.mark.parametrize(("toml", "key"), [
    ("[smtp]\nmax_message_size = \"big\"\n", "smtp.max_message_size"),
    ("[smtp]\nlisten = [\"nonsense\"]\n", "smtp.listen"),
    ("[smtp]\nvrfy = \"maybe\"\n", "smtp.vrfy"),
    ("trusted_networks = [\"10.0.0.0/33\"]\n", "trusted_networks"),
    ("domains = [\"bad domain\"]\n", "domains"),
    ("unknown = 1\n", "unknown"),
    ("[smtp]\ntimeout_command = \"soon\"\n", "smtp.timeout_command"),
])
def test_errors_name_the_key(tmp_path: Path, toml: str, key: str) -> None:
    cfg = tmp_path / "taube.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError) as e:
        load_settings(cfg)
    assert key in str(e.value)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("hostname = ")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml")


def test_durations_and_listen() -> None:
    assert parse_duration("5m") == 300 and parse_duration(30) == 30 and parse_duration("1.5h") == 5400
    with pytest.raises(ValueError):
        parse_duration(True)
    assert parse_listen("[::1]:25") == ("::1", 25)
    assert parse_listen(":2525") == ("0.0.0.0", 2525)
    with pytest.raises(ValueError):
        parse_listen("host:99999")
