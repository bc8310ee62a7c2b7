"""Read YAML, substitute ``${ENV_VAR}``, validate, and say exactly what is wrong.

Every failure becomes one :class:`ConfigError` whose message reads
``<file>: <key path>: <what was expected>``, e.g.
``site.yaml: devices[2].port: Input should be less than or equal to 65535 (got 70000)``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from gateway.config.profile import ModbusProfile, OpcUaProfile, Profile
from gateway.config.site import Device, SiteConfig

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


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which PyYAML would silently overwrite."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise ConfigError(f"line {mark.line + 1}: key {key!r} appears twice")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def format_path(loc: tuple[int | str, ...]) -> str:
    """('devices', 2, 'modbus', 'port') -> 'devices[2].port' (drops pydantic's union tags)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("modbus", "opcua") and out.endswith("]"):
            continue  # the discriminated-union branch pydantic inserts; not a key in the file
        else:
            out += f".{part}" if out else str(part)
    return out


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: {where}not valid YAML: {problem}") from None


def _substitute(value: Any, path: Path, loc: str) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string, naming the key of a missing one."""
    if isinstance(value, dict):
        return {k: _substitute(v, path, f"{loc}.{k}" if loc else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, path, f"{loc}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{path}: {loc}: environment variable {name} is not set")

    whole = _ENV.fullmatch(value)
    replaced = _ENV.sub(replace, value)
    # A whole-value reference may stand for a number or a boolean: let YAML type it again.
    return yaml.safe_load(replaced) if whole and replaced.strip() else replaced


def _describe(error: dict[str, Any]) -> str:
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        message = "unknown key (check the spelling; see the README for the keys)"
    elif error["type"] == "missing":
        message = "required key is missing"
    elif error["type"] == "value_error":
        message = message.removeprefix("Value error, ")
    got = error.get("input")
    if error["type"] not in ("missing", "extra_forbidden") and not isinstance(got, dict | list):
        message += f" (got {got!r})"
    return message


def validation_message(path: Path, exc: ValidationError, prefix: str = "") -> str:
    """One line per problem: ``file: key.path: message``."""
    lines = []
    for error in exc.errors():
        loc = format_path(tuple(error["loc"]))
        full = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "(top level)"
        lines.append(f"{path}: {full}: {_describe(dict(error))}")
    return "\n".join(lines)


def load_profile(path: Path) -> ModbusProfile | OpcUaProfile:
    """Load and validate one device profile."""
    data = _substitute(_read_yaml(path), path, "")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with protocol, model and signals")
    try:
        return _PROFILE_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(path, exc)) from None


#: Sections a command may do without: each has a default (omitted = not used).
OPTIONAL_SECTIONS = frozenset({"mqtt", "influxdb", "control", "logging"})


def load_site(path: Path | str, *, unused: Collection[str] = ()) -> Site:
    """Load a site file and the profiles its devices use; :class:`ConfigError` on any fault.

    ``unused``: optional sections (:data:`OPTIONAL_SECTIONS`) the caller never looks at. One of
    them that names an environment variable which is not set is left out, as if omitted, instead
    of failing: ``heat-gateway read`` polls a device and needs no broker password. Everything
    else is checked as always.
    """
    path = Path(path)
    raw = _read_yaml(path)
    if isinstance(raw, dict):
        for key in OPTIONAL_SECTIONS.intersection(unused).intersection(raw):
            try:
                _substitute(raw[key], path, key)
            except ConfigError:
                del raw[key]
    data = _substitute(raw, path, "")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with site, devices, mqtt, ...")
    try:
        config = SiteConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(path, exc)) from None

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
            profiles[device.profile] = load_profile(profile_path)
        profile = profiles[device.profile]
        if profile.protocol != device.protocol:
            raise ConfigError(
                f"{path}: devices[{index}].profile: profile {device.profile!r} is for "
                f"{profile.protocol} but the device's protocol is {device.protocol}"
            )
    return Site(path=path, config=config, profiles=profiles)
