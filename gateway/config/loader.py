"""Read YAML, substitute ``${ENV_VAR}``, validate, and say exactly what is wrong.

The YAML itself is read by :mod:`gateway.config.yamlsafe` (size, depth and alias limits);
``${VAR}`` is substituted into the parsed strings as text; values that came from the
environment or from a secret key are never printed in a message.

Every failure becomes one :class:`ConfigError` whose message reads
``<file>: <key path>: <what was expected>``, e.g.
``site.yaml: devices[2].port: Input should be less than or equal to 65535 (got 70000)``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import TypeAdapter, ValidationError

from gateway.config.credentials import CREDENTIALS_ENV, CredentialError, read_credential
from gateway.config.profile import SIGNAL_NAME, ModbusProfile, OpcUaProfile, Profile
from gateway.config.roles import check_roles
from gateway.config.secrets import remember_secrets
from gateway.config.site import NAME, PROFILE_NAME, SECRET_KEYS, TOPIC_PREFIX, Device, OpcUaDevice, SiteConfig
from gateway.config.yamlsafe import YamlFileError, read_yaml

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_PROFILE_ADAPTER: TypeAdapter[ModbusProfile | OpcUaProfile] = TypeAdapter(Profile)


class ConfigError(Exception):
    """A configuration file is unreadable or invalid; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Site:
    """A validated site file with every device's profile loaded."""

    path: Path
    config: SiteConfig
    profiles: dict[str, ModbusProfile | OpcUaProfile]

    def profile_of(self, device: Device) -> ModbusProfile | OpcUaProfile:
        """The profile a device uses."""
        return self.profiles[device.profile]

    def device(self, name: str) -> Device:
        """A device by name; :class:`ConfigError` listing the known names otherwise."""
        for device in self.config.devices:
            if device.name == name:
                return device
        known = ", ".join(d.name for d in self.config.devices)
        raise ConfigError(f"{self.path}: no device named {name!r} (devices: {known})")


def format_path(loc: tuple[int | str, ...]) -> str:
    """('devices', 2, 'modbus', 'port') -> 'devices[2].port' (drops pydantic's union tags, a profile's too)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("modbus", "opcua") and (not out or out.endswith("]")):
            continue  # the discriminated-union branch pydantic inserts; not a key in the file
        else:
            out += f".{part}" if out else str(part)
    return out


def _read_yaml(path: Path) -> Any:
    try:
        return read_yaml(path)
    except YamlFileError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _is_secret(loc: tuple[int | str, ...]) -> bool:
    return any(part in SECRET_KEYS for part in loc if isinstance(part, str))


@dataclass(slots=True)
class _Sources:
    """Where values came from, so that no message ever prints one that is secret.

    ``env_paths`` are the key paths (as :func:`format_path` writes them) whose value was
    substituted from the environment; ``hidden`` are the values no message may contain: every
    substituted environment value and every value of a secret key (password, token, ...).
    """

    env_paths: set[str] = field(default_factory=set)
    hidden: set[str] = field(default_factory=set)

    def mask(self, text: str) -> str:
        """``text`` with every hidden value of 3 characters or more replaced by ``***``.

        The last line of defence: messages leave such values out by construction (no "got"
        for them), this catches one quoted inside a validator's own sentence. Shorter values
        cannot be told from ordinary words and digits, so they rely on the construction alone.
        """
        for value in sorted(self.hidden, key=len, reverse=True):
            if len(value) >= _MIN_MASKED:
                text = text.replace(value, "***")
        return text


_MIN_MASKED = 3


def _substitute(value: Any, path: Path, loc: tuple[int | str, ...], sources: _Sources) -> Any:
    """Replace ${VAR} and ${VAR:-default} inside string values, as text: never parsed again.

    A value is substituted after the YAML is parsed, so ``${PASSWORD}`` holding ``abc #x``,
    ``*x``, ``@x`` or ``~`` stays exactly that string, and ``0777`` stays "0777" for a string
    key; a number or boolean key gets the text and pydantic converts it for that key's type.
    """
    if isinstance(value, dict):
        return {k: _substitute(v, path, (*loc, k), sources) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, path, (*loc, i), sources) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    if _is_secret(loc):
        sources.hidden.add(value)
    if "${" not in value:
        return value
    key = format_path(loc)
    used_env = False

    def replace(match: re.Match[str]) -> str:
        nonlocal used_env
        text, from_env = _variable(match.group(1), match.group(2), path, key, sources)
        used_env = used_env or from_env
        return text

    replaced = _ENV.sub(replace, value)
    if used_env:
        sources.env_paths.add(key)
        if _is_secret(loc):
            sources.hidden.add(replaced)
    return replaced


def _variable(name: str, default: str | None, path: Path, key: str, sources: _Sources) -> tuple[str, bool]:
    """``${name:-default}``'s text, and whether it came from the environment (or a credential): hidden then."""
    try:
        credential = read_credential(name)  # LoadCredential= (gateway/config/credentials.py)
    except CredentialError as exc:
        raise ConfigError(f"{path}: {key}: {exc}") from None
    if credential is not None:
        sources.hidden.add(credential)
        return credential, True
    if name in os.environ:
        text = os.environ[name]
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"{path}: {key}: environment variable {name} is not valid UTF-8") from None
        sources.hidden.add(text)
        return text, True
    if default is not None:
        return default, False
    where = f" (nor a credential {name} in ${CREDENTIALS_ENV})" if os.environ.get(CREDENTIALS_ENV) else ""
    raise ConfigError(f"{path}: {key}: environment variable {name} is not set{where}")


_PATTERN_HELP = {
    NAME: "lower-case letters, digits, - and _, starting with a letter or digit (it becomes one MQTT topic "
    "level: no /, +, #, $, spaces or NUL)",
    PROFILE_NAME: "a file name in profiles_dir without .yaml (letters, digits, ., - and _; no folder)",
    TOPIC_PREFIX: "topic levels separated by single /, without + or #, and not starting with $",
    SIGNAL_NAME: "snake_case starting with a lower-case letter, unit last (supply_temp_c)",
}
"""What a name pattern means, in words: a regular expression is no help at 3 a.m."""


def _describe(error: dict[str, Any], *, hide: str | None) -> str:
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        message = "unknown key (check the spelling; see the README for the keys)"
    elif error["type"] == "missing":
        message = "required key is missing"
    elif error["type"] == "value_error":
        message = message.removeprefix("Value error, ")
    elif error["type"] == "string_pattern_mismatch":
        pattern = str(error.get("ctx", {}).get("pattern", ""))
        if pattern in _PATTERN_HELP:
            message = f"String should match pattern: {_PATTERN_HELP[pattern]}"
    got = error.get("input")
    if error["type"] in ("missing", "extra_forbidden") or isinstance(got, dict | list):
        return message
    if hide is not None:
        # pydantic quotes some inputs in its own sentence (a union tag): leave that out too.
        if isinstance(got, str) and got and got in message:
            message = message.replace(got, "***")
        return f"{message} ({hide})"
    shown = repr(got)
    return f"{message} (got {shown if len(shown) <= _MAX_SHOWN else shown[:_MAX_SHOWN] + '...'})"


_MAX_SHOWN = 80


def validation_message(path: Path, exc: ValidationError, prefix: str = "", sources: _Sources | None = None) -> str:
    """One line per problem: ``file: key.path: message``; secret and environment values never shown."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        key = format_path(loc)
        hide = None
        if _is_secret(loc):
            hide = "a secret: value not shown"
        elif sources is not None and key in sources.env_paths:
            hide = "value from the environment, not shown"
        full = f"{prefix}{key}" if key else prefix.rstrip(".") or "(top level)"
        message = _describe(dict(error), hide=hide)
        if full == "(top level)" and _STARTS_WITH_KEY.match(message):
            lines.append(f"{path}: {message}")  # a whole-file check that names its key itself
        else:
            lines.append(f"{path}: {full}: {message}")
    return "\n".join(lines)


_STARTS_WITH_KEY = re.compile(r"^[a-z_]+(\[\d+\])?(\.[A-Za-z0-9_]+)*[:\s]")


def _load_profile(path: Path, sources: _Sources) -> ModbusProfile | OpcUaProfile:
    data = _substitute(_read_yaml(path), path, (), sources)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with protocol, model and signals")
    try:
        return _PROFILE_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(path, exc, sources=sources)) from None


def load_profile(path: Path) -> ModbusProfile | OpcUaProfile:
    """Load and validate one device profile."""
    sources = _Sources()
    try:
        return _load_profile(path, sources)
    except ConfigError as exc:
        raise ConfigError(sources.mask(str(exc))) from None


#: Sections a command may do without: each has a default (omitted = not used).
OPTIONAL_SECTIONS = frozenset({"mqtt", "influxdb", "control", "logging", "http"})


def load_site(path: Path | str, *, unused: Collection[str] = (), device: str | None = None) -> Site:
    """Load a site file and the profiles its devices use; :class:`ConfigError` on any fault.

    No message names a value that came from the environment or from a secret key.

    ``unused``: optional sections (:data:`OPTIONAL_SECTIONS`) the caller never looks at. One of
    them that names an environment variable which is not set is left out, as if omitted, instead
    of failing: ``heat-gateway read`` polls a device and needs no broker password. The checks
    across sections (control roles, MQTT TLS files) skip an unused section too. Everything else
    is checked as always. ``device``: the one device the caller talks to; a secret of
    another device (its OPC UA password, say) may then name a variable that is not set.
    """
    sources = _Sources()
    try:
        site = _load_site(Path(path), sources, unused, device)
    except ConfigError as exc:
        raise ConfigError(sources.mask(str(exc))) from None
    remember_secrets(_secret_values(site.config))
    return site


def _secret_values(config: SiteConfig) -> set[str]:
    values = {config.mqtt.password, config.influxdb.token if config.influxdb else None}
    for device in config.devices:
        if isinstance(device, OpcUaDevice):
            values |= {device.password, device.security.private_key_password}
    secrets = {value.get_secret_value() for value in values if value is not None}
    if config.influxdb is not None:
        # http://user:password@host/ works, and the password must not show in a log line either.
        secrets.add(urlsplit(config.influxdb.url).password or "")
    return secrets - {""}


def _unset(text: str) -> bool:
    """Whether a value names an environment variable that is not set and has no default."""
    return any(m.group(2) is None and m.group(1) not in os.environ for m in _ENV.finditer(text))


def _blank_unset_secrets(value: Any) -> None:
    """Secrets of a device the command does not talk to: an unset variable becomes ""."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in SECRET_KEYS and isinstance(item, str) and _unset(item):
                value[key] = ""
            else:
                _blank_unset_secrets(item)


def _load_site(path: Path, sources: _Sources, unused: Collection[str] = (), only: str | None = None) -> Site:
    raw = _read_yaml(path)
    if isinstance(raw, dict):
        _drop_unused(raw, path, unused, only)
    data = _substitute(raw, path, (), sources)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with site, devices, mqtt, ...")
    try:
        config = SiteConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(path, exc, sources=sources)) from None
    site = Site(path=path, config=config, profiles=_load_profiles(path, config, sources))
    # A section the command never uses is not held against it (`read` while control is set up).
    problems = [] if "mqtt" in unused else _missing_files(config)
    problems += [] if "control" in unused else check_roles(site)
    if problems:
        raise ConfigError("\n".join(f"{path}: {problem}" for problem in problems))
    return site


def _drop_unused(raw: dict[str, Any], path: Path, unused: Collection[str], only: str | None) -> None:
    """An optional section the command does not use whose variables are not set is dropped; with
    ``only`` (one device), the other devices' unset secrets are blanked."""
    for key in OPTIONAL_SECTIONS.intersection(unused).intersection(raw):
        try:
            _substitute(raw[key], path, (key,), _Sources())
        except ConfigError:
            del raw[key]
    if only is not None and isinstance(raw.get("devices"), list):
        for entry in raw["devices"]:
            if isinstance(entry, dict) and entry.get("name") != only:
                _blank_unset_secrets(entry)


def _load_profiles(path: Path, config: SiteConfig, sources: _Sources) -> dict[str, ModbusProfile | OpcUaProfile]:
    """Every profile the devices name, each loaded once; a missing one or a protocol mismatch names the device."""
    profiles_dir = config.profiles_dir if config.profiles_dir.is_absolute() else path.parent / config.profiles_dir
    profiles: dict[str, ModbusProfile | OpcUaProfile] = {}
    for index, device in enumerate(config.devices):
        if device.profile not in profiles:
            profile_path = profiles_dir / f"{device.profile}.yaml"
            if not profile_path.is_file():
                available = sorted(p.stem for p in profiles_dir.glob("*.yaml"))
                raise ConfigError(
                    f"{path}: devices[{index}].profile: no profile {device.profile!r} "
                    f"({profile_path} does not exist; available: {', '.join(available) or 'none'})"
                )
            profiles[device.profile] = _load_profile(profile_path, sources)
        profile = profiles[device.profile]
        if profile.protocol != device.protocol:
            raise ConfigError(
                f"{path}: devices[{index}].profile: profile {device.profile!r} is for "
                f"{profile.protocol} but the device's protocol is {device.protocol}"
            )
    return profiles


def _missing_files(config: SiteConfig) -> list[str]:
    """TLS files the MQTT client opens at start: a missing one would stop `run` with a traceback.

    Checked as the client opens them (a relative path from the working directory). OPC UA
    certificates are not checked here: a device whose certificate cannot be loaded is reported
    unavailable with the reason, and the other devices run on.
    """
    tls = config.mqtt.tls
    if tls is None:
        return []
    return [
        f"mqtt.tls.{key}: no such file: {file}"
        for key in ("ca_file", "cert_file", "key_file")
        if (file := getattr(tls, key)) is not None and not file.is_file()
    ]
