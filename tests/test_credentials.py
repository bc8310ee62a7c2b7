"""Secrets from systemd's LoadCredential= ($CREDENTIALS_DIRECTORY) fill ${NAME} in the site file."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_site

REPO = Path(__file__).resolve().parent.parent


def write_site(tmp_path: Path) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(
        f"site: cred\nprofiles_dir: {REPO / 'config' / 'profiles'}\ndevices:\n"
        "  - {name: cdu-1, kind: cdu, protocol: modbus, host: 127.0.0.1, profile: cdu}\n"
        "mqtt: {host: 127.0.0.1, username: gateway, password: '${MQTT_PASSWORD}'}\n",
        encoding="utf-8",
    )
    return path


def password_of(path: Path) -> str:
    password = load_site(path).config.mqtt.password
    assert password is not None
    return password.get_secret_value()


def test_a_credential_fills_the_value_and_wins_over_the_environment(tmp_path, monkeypatch):
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "MQTT_PASSWORD").write_text("from-credential #1\n", encoding="utf-8")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    monkeypatch.setenv("MQTT_PASSWORD", "from-environment")
    assert password_of(write_site(tmp_path)) == "from-credential #1"  # one trailing newline dropped, text kept


def test_without_the_credential_the_environment_is_used(tmp_path, monkeypatch):
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    monkeypatch.setenv("MQTT_PASSWORD", "from-environment")
    assert password_of(write_site(tmp_path)) == "from-environment"


def test_neither_names_both_places(tmp_path, monkeypatch):
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.delenv("MQTT_PASSWORD", raising=False)
    site = write_site(tmp_path)
    with pytest.raises(ConfigError) as error:
        load_site(site)
    assert str(error.value) == (
        f"{site}: mqtt.password: environment variable MQTT_PASSWORD is not set "
        "(nor a credential MQTT_PASSWORD in $CREDENTIALS_DIRECTORY)"
    )


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", None])
def test_an_unusable_credential_is_named_without_its_content(tmp_path, monkeypatch, content):
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    if content is None:
        (credentials / "MQTT_PASSWORD").mkdir()  # unreadable as a file
    else:
        (credentials / "MQTT_PASSWORD").write_bytes(content)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    site = write_site(tmp_path)
    with pytest.raises(ConfigError) as error:
        load_site(site)
    message = str(error.value)
    assert message.startswith(f"{site}: mqtt.password: credential MQTT_PASSWORD ({credentials / 'MQTT_PASSWORD'})")
    assert "not utf-8" not in message.lower().replace("not valid utf-8", "")
